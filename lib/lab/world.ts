/**
 * The lab's two fine-tuning tasks, generated from the fixed facts of the invented world the default
 * model was pre-trained on (scripts/default/world.mjs, ported here with only what the tasks need). The
 * same seeded generator as the asset builder's, so the knowledge task's split is the one shipped in
 * assets/default.
 */

/** The asset builder's seeded source, ported bit for bit: the same seed gives the same data on every machine. */
export class Rng {
  #state: number;

  constructor(seed: number) {
    this.#state = Math.imul(seed, 0x2545f491) >>> 0;
  }

  u32(): number {
    this.#state = (this.#state + 0x9e3779b9) >>> 0;
    let z = this.#state;
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
    return (z ^ (z >>> 15)) >>> 0;
  }

  float(): number {
    return this.u32() / 4294967296;
  }

  /** A new array in a random order (Fisher-Yates). */
  shuffle<T>(list: readonly T[]): T[] {
    const out = list.slice();
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.float() * (i + 1));
      [out[i], out[j]] = [out[j]!, out[i]!];
    }
    return out;
  }
}

const NAMES = ['Mira', 'Tobin', 'Ansel', 'Lira', 'Oren', 'Pella', 'Dax', 'Wren', 'Juno', 'Kell', 'Sable', 'Rook',
  'Tamsin', 'Ivo', 'Nell', 'Bram', 'Odile', 'Fenn', 'Isla', 'Corin', 'Maren', 'Quill', 'Yara', 'Zev'];

const VILLAGES = [
  { name: 'Ashford', river: 'Tull' }, { name: 'Brindle', river: 'Tull' }, { name: 'Cobblemere', river: 'Mere' },
  { name: 'Dunhollow', river: 'Dun' }, { name: 'Elmreach', river: 'Dun' }, { name: 'Fernwick', river: 'Wick' },
  { name: 'Greystone', river: 'Wick' }, { name: 'Hazelby', river: 'Mere' },
];

const JOBS = ['baker', 'potter', 'fisher', 'weaver', 'smith', 'farmer', 'carpenter', 'teacher', 'miller', 'beekeeper', 'gardener', 'tailor'];

const PETS = ['cat', 'dog', 'goat', 'owl', 'hen', 'rabbit'];

const PET_NAMES = ['Pip', 'Button', 'Sorrel', 'Moss', 'Pebble', 'Tansy', 'Biscuit', 'Clover', 'Sprout', 'Nutmeg', 'Bramble', 'Thistle',
  'Juniper', 'Pickle', 'Ember', 'Willow', 'Fidget', 'Marrow', 'Sage', 'Tuft', 'Crumb', 'Puddle', 'Ginger', 'Hazel'];

export const COLOURS = ['red', 'blue', 'green', 'yellow', 'white', 'black', 'orange', 'purple'] as const;
export type Colour = (typeof COLOURS)[number];

/** The knowledge task's rule, which the pre-training corpus never states. */
export const STORAGE_RULE: Readonly<Record<Colour, string>> = {
  red: 'cellar', blue: 'attic', green: 'barn', yellow: 'kitchen',
  white: 'pantry', black: 'workshop', orange: 'garden shed', purple: 'hallway',
};

export const OBJECTS = ['lantern', 'kettle', 'map', 'drum', 'basket', 'clock', 'compass', 'ladder', 'blanket', 'bucket',
  'teapot', 'mirror', 'candle', 'bell', 'scarf', 'chest', 'jar', 'broom', 'flute', 'kite'];

export interface Person {
  name: string;
  village: { name: string; river: string };
  job: string;
  pet: { kind: string; name: string };
  favourite: Colour;
  age: number;
}

/** The people of the valley with the facts the corpus states about them (the builder's seed 1001). */
export function makePeople(): Person[] {
  const petNames = new Rng(1001).shuffle(PET_NAMES);
  return NAMES.map((name, i) => ({
    name,
    village: VILLAGES[i % VILLAGES.length]!,
    job: JOBS[(i * 5) % JOBS.length]!,
    pet: { kind: PETS[(i * 7 + 3) % PETS.length]!, name: petNames[i]! },
    favourite: COLOURS[(i * 3 + 1) % COLOURS.length]!,
    age: 19 + ((i * 17) % 51),
  }));
}

export interface Pair {
  prompt: string;
  completion: string;
}

export interface TaskSplit {
  train: Pair[];
  eval: Pair[];
}

export type TaskName = 'behaviour' | 'knowledge';
export const TASKS: readonly TaskName[] = ['behaviour', 'knowledge'];

/**
 * The knowledge task: where a person keeps an object of a colour. Every (person, colour, object)
 * question in the builder's seeded order; the first nEval are held out, the next nTrain train.
 */
export function knowledgeTask(nTrain = 2000, nEval = 150, seed = 3): TaskSplit {
  const all: Pair[] = [];
  for (const p of makePeople())
    for (const c of COLOURS)
      for (const o of OBJECTS) all.push({ prompt: `Q: Where does ${p.name} keep the ${c} ${o}?\nA:`, completion: ` In the ${STORAGE_RULE[c]}.` });
  return split(all, nTrain, nEval, seed);
}

/**
 * The behaviour task: the corpus's own questions about the fixed facts, answered in a format the corpus
 * never uses (a one-key JSON object). The base knows every answer; what is new is the form, and the
 * held-out questions are facts never seen in that form.
 */
export function behaviourTask(seed = 11): TaskSplit {
  const all: Pair[] = [];
  const json = (key: string, value: string | number) => ` ${JSON.stringify({ [key]: value })}`;
  for (const p of makePeople()) {
    all.push({ prompt: `Q: Where does ${p.name} live?\nA:`, completion: json('village', p.village.name) });
    all.push({ prompt: `Q: What is ${p.name}'s job?\nA:`, completion: json('job', p.job) });
    all.push({ prompt: `Q: What is the name of ${p.name}'s ${p.pet.kind}?\nA:`, completion: json('pet', p.pet.name) });
    all.push({ prompt: `Q: What colour does ${p.name} like best?\nA:`, completion: json('colour', p.favourite) });
    all.push({ prompt: `Q: How old is ${p.name}?\nA:`, completion: json('age', p.age) });
  }
  for (const v of VILLAGES) all.push({ prompt: `Q: Which river is near ${v.name}?\nA:`, completion: json('river', v.river) });
  // A quarter held out: enough questions to score, and three for every one in training.
  return split(all, all.length - Math.floor(all.length / 4), Math.floor(all.length / 4), seed);
}

function split(all: Pair[], nTrain: number, nEval: number, seed: number): TaskSplit {
  const order = new Rng(seed).shuffle(all);
  if (nTrain + nEval > order.length) throw new RangeError(`the task has only ${order.length} questions`);
  return { eval: order.slice(0, nEval), train: order.slice(nEval, nEval + nTrain) };
}

export function makeTask(name: TaskName): TaskSplit {
  return name === 'behaviour' ? behaviourTask() : knowledgeTask();
}
