/**
 * The invented world of the default assets, and the text generated about it: a valley of eight
 * villages, twenty-four people with fixed homes, trades and pets, their objects, colours and days.
 *
 * Everything here is templated English written for lorakit; each generator takes an Rng so the whole
 * corpus is a function of one seed.
 */
import { Rng } from './rng.mjs';

// ---------------------------------------------------------------------------------------------------
// The world's fixed facts

const NAMES = [
  ['Mira', 'f'], ['Tobin', 'm'], ['Ansel', 'm'], ['Lira', 'f'], ['Oren', 'm'], ['Pella', 'f'],
  ['Dax', 'm'], ['Wren', 'f'], ['Juno', 'f'], ['Kell', 'm'], ['Sable', 'f'], ['Rook', 'm'],
  ['Tamsin', 'f'], ['Ivo', 'm'], ['Nell', 'f'], ['Bram', 'm'], ['Odile', 'f'], ['Fenn', 'm'],
  ['Isla', 'f'], ['Corin', 'm'], ['Maren', 'f'], ['Quill', 'm'], ['Yara', 'f'], ['Zev', 'm'],
];

export const VILLAGES = [
  { name: 'Ashford', look: 'a quiet village beside a shallow ford', river: 'the Tull' },
  { name: 'Brindle', look: 'a small village on a windy hill', river: 'the Tull' },
  { name: 'Cobblemere', look: 'a village of stone houses around a round lake', river: 'the Mere' },
  { name: 'Dunhollow', look: 'a sleepy village in a deep green hollow', river: 'the Dun' },
  { name: 'Elmreach', look: 'a long village under tall elm trees', river: 'the Dun' },
  { name: 'Fernwick', look: 'a busy village with a wide market square', river: 'the Wick' },
  { name: 'Greystone', look: 'an old village built from grey stone', river: 'the Wick' },
  { name: 'Hazelby', look: 'a tidy village at the edge of a hazel wood', river: 'the Mere' },
];

const JOBS = [
  { job: 'baker', acts: ['baked twelve round loaves', 'kneaded the dough before dawn', 'sold warm buns at the door', 'swept flour from the floor'] },
  { job: 'potter', acts: ['shaped six bowls on the wheel', 'fired a row of jugs in the kiln', 'painted stripes on a new vase', 'mixed a fresh batch of clay'] },
  { job: 'fisher', acts: ['mended a torn net', 'rowed out on the river at sunrise', 'caught three silver fish', 'sold the catch at the market'] },
  { job: 'weaver', acts: ['wove a long strip of cloth', 'dyed the wool in a big pot', 'fixed a broken loom', 'sorted the yarn by colour'] },
  { job: 'smith', acts: ['hammered a new horseshoe', 'sharpened four kitchen knives', 'lit the forge early', 'made a hinge for a gate'] },
  { job: 'farmer', acts: ['milked the cows', 'planted a row of beans', 'fed the hens', 'carried hay to the barn'] },
  { job: 'carpenter', acts: ['built a small table', 'fixed a loose step', 'cut planks for a fence', 'carved a wooden spoon'] },
  { job: 'teacher', acts: ['taught the children to count', 'read a story to the class', 'wrote sums on the board', 'marked a pile of slates'] },
  { job: 'miller', acts: ['ground a sack of wheat', 'oiled the wheel of the mill', 'weighed the flour', 'stacked the sacks by the door'] },
  { job: 'beekeeper', acts: ['checked the hives', 'collected a jar of honey', 'moved a hive into the shade', 'cleaned the wax from a frame'] },
  { job: 'gardener', acts: ['pulled weeds from the beds', 'watered the roses', 'trimmed the hedge', 'planted tulip bulbs'] },
  { job: 'tailor', acts: ['sewed a blue coat', 'let out a pair of trousers', 'stitched buttons on a shirt', 'measured a customer for a cloak'] },
];

const PETS = [
  { kind: 'cat', acts: ['sleeps on the windowsill', 'chases moths in the evening', 'sits by the warm stove', 'watches the birds from the roof'] },
  { kind: 'dog', acts: ['runs along the river bank', 'barks at the post cart', 'fetches sticks from the field', 'waits by the gate at noon'] },
  { kind: 'goat', acts: ['eats the weeds in the yard', 'climbs onto the woodpile', 'chews on old rope', 'follows the children to school'] },
  { kind: 'owl', acts: ['hoots from the barn at night', 'sleeps all day in the rafters', 'catches mice in the field', 'blinks slowly at visitors'] },
  { kind: 'hen', acts: ['lays a brown egg each morning', 'pecks at seeds in the yard', 'hides under the cart when it rains', 'clucks at the cat'] },
  { kind: 'rabbit', acts: ['digs holes in the garden', 'nibbles clover by the fence', 'hops around the kitchen', 'naps in a box of straw'] },
];

const PET_NAMES = ['Pip', 'Button', 'Sorrel', 'Moss', 'Pebble', 'Tansy', 'Biscuit', 'Clover', 'Sprout', 'Nutmeg', 'Bramble', 'Thistle',
  'Juniper', 'Pickle', 'Ember', 'Willow', 'Fidget', 'Marrow', 'Sage', 'Tuft', 'Crumb', 'Puddle', 'Ginger', 'Hazel'];

export const COLOURS = ['red', 'blue', 'green', 'yellow', 'white', 'black', 'orange', 'purple'];

/** The fine-tuning task's rule: in this valley an object's colour decides the room it is kept in. */
export const STORAGE_RULE = {
  red: 'cellar', blue: 'attic', green: 'barn', yellow: 'kitchen',
  white: 'pantry', black: 'workshop', orange: 'garden shed', purple: 'hallway',
};

export const OBJECTS = ['lantern', 'kettle', 'map', 'drum', 'basket', 'clock', 'compass', 'ladder', 'blanket', 'bucket',
  'teapot', 'mirror', 'candle', 'bell', 'scarf', 'chest', 'jar', 'broom', 'flute', 'kite'];

const ROOMS = ['attic', 'cellar', 'kitchen', 'barn', 'pantry', 'workshop', 'garden shed', 'hallway', 'bedroom', 'parlour'];

// Count nouns: [singular, plural].
const COUNTABLE = [['apple', 'apples'], ['pear', 'pears'], ['egg', 'eggs'], ['candle', 'candles'], ['cup', 'cups'], ['shell', 'shells'],
  ['stone', 'stones'], ['coin', 'coins'], ['feather', 'feathers'], ['plum', 'plums'], ['button', 'buttons'], ['book', 'books'],
  ['acorn', 'acorns'], ['marble', 'marbles'], ['ribbon', 'ribbons'], ['carrot', 'carrots']];

const GOODS = [['loaf of bread', 'loaves of bread'], ['jar of honey', 'jars of honey'], ['ball of wool', 'balls of wool'],
  ['bag of flour', 'bags of flour'], ['fish', 'fish'], ['onion', 'onions'], ['wheel of cheese', 'wheels of cheese'],
  ['bunch of carrots', 'bunches of carrots'], ['pot of jam', 'pots of jam'], ['bundle of firewood', 'bundles of firewood'],
  ['basket of plums', 'baskets of plums'], ['box of nails', 'boxes of nails']];

const NUMBER_WORDS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten', 'eleven', 'twelve',
  'thirteen', 'fourteen', 'fifteen', 'sixteen', 'seventeen', 'eighteen', 'nineteen', 'twenty'];

const DAYS = ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'];

const SEASONS = {
  spring: { weather: ['mild', 'rainy', 'bright', 'breezy'], sight: ['the first blossom on the pear trees', 'lambs in the low field', 'green shoots along the lane'] },
  summer: { weather: ['hot', 'sunny', 'dry', 'warm'], sight: ['bees over the clover', 'children swimming in the river', 'hay drying in long rows'] },
  autumn: { weather: ['windy', 'foggy', 'cool', 'damp'], sight: ['red leaves on the path', 'apples piled in carts', 'geese flying south'] },
  winter: { weather: ['cold', 'snowy', 'frosty', 'grey'], sight: ['ice on the well', 'smoke from every chimney', 'snow on the roofs'] },
};

const VILLAGE_PLACES = ['market', 'bakery', 'mill', 'square', 'well', 'bridge', 'library', 'school', 'orchard', 'inn'];

const TOPICS = ['the weather', 'the harvest', 'the price of flour', 'an old song', 'the new bridge', 'the summer fair',
  'a lost goat', 'the river', 'their children', 'a letter from Fernwick', 'the spring dance', 'a broken cart wheel'];

const TOGETHER = ['drank tea by the fire', 'walked along the river', 'played cards in the kitchen', 'baked a plum cake',
  'mended a fence', 'sang old songs', 'picked berries by the wood', 'painted the garden gate', 'fed the ducks at the pond'];

// Habits: [present, past].
const MORNING = [['drinks a cup of mint tea', 'drank a cup of mint tea'], ['opens every window', 'opened every window'],
  ['feeds the birds in the yard', 'fed the birds in the yard'], ['walks to the well for water', 'walked to the well for water'],
  ['sweeps the front step', 'swept the front step'], ['reads by the kitchen window', 'read by the kitchen window'],
  ['eats porridge with honey', 'ate porridge with honey'], ['waters the herbs on the sill', 'watered the herbs on the sill']];

const EVENING = [['lights a candle and reads', 'lit a candle and read'], ['plays the flute', 'played the flute'],
  ['writes a letter', 'wrote a letter'], ['mends socks by the fire', 'mended socks by the fire'],
  ['tells stories to the neighbours', 'told stories to the neighbours'], ['counts the coins in a tin', 'counted the coins in a tin'],
  ['goes to bed early', 'went to bed early'], ['sits on the porch and watches the stars', 'sat on the porch and watched the stars']];

// Things one gathers: [singular, plural].
const GATHERED = [['apple', 'apples'], ['pear', 'pears'], ['plum', 'plums'], ['acorn', 'acorns'], ['shell', 'shells'],
  ['feather', 'feathers'], ['carrot', 'carrots'], ['mushroom', 'mushrooms'], ['walnut', 'walnuts'], ['egg', 'eggs']];

// ---------------------------------------------------------------------------------------------------
// Small grammar helpers

const cap = (s) => s[0].toUpperCase() + s.slice(1);
const article = (word) => (/^[aeiou]/.test(word) ? 'an' : 'a');
const withArticle = (word) => `${article(word)} ${word}`;
const num = (n) => NUMBER_WORDS[n];
const count = (n, [one, many]) => `${num(n)} ${n === 1 ? one : many}`;
const list = (items) => (items.length === 1 ? items[0] : `${items.slice(0, -1).join(', ')} and ${items.at(-1)}`);

/** The people of the valley with their fixed facts, the same for every seed of the text generators. */
export function makePeople() {
  const rng = new Rng(1001);
  const petNames = rng.shuffle(PET_NAMES);
  return NAMES.map(([name, sex], i) => {
    const village = VILLAGES[i % VILLAGES.length];
    return {
      name,
      he: sex === 'f' ? 'she' : 'he',
      his: sex === 'f' ? 'her' : 'his',
      him: sex === 'f' ? 'her' : 'him',
      village,
      job: JOBS[(i * 5) % JOBS.length],
      pet: { ...PETS[(i * 7 + 3) % PETS.length], name: petNames[i] },
      favourite: COLOURS[(i * 3 + 1) % COLOURS.length],
      door: COLOURS[(i * 5 + 2) % COLOURS.length],
      age: 19 + ((i * 17) % 51),
    };
  });
}

// ---------------------------------------------------------------------------------------------------
// Document generators: each returns one short document (a few sentences, or a few Q/A lines)

function other(rng, people, p) {
  let q;
  do q = rng.pick(people); while (q === p);
  return q;
}

const GENERATORS = [
  // A person's profile.
  (rng, people) => {
    const p = rng.pick(people);
    const s = [`${p.name} lives in ${p.village.name}.`, `${cap(p.he)} is ${withArticle(p.job.job)}.`];
    if (rng.chance(0.6)) s.push(`${cap(p.he)} has ${withArticle(p.pet.kind)} called ${p.pet.name}.`);
    if (rng.chance(0.5)) s.push(`${cap(p.his)} favourite colour is ${p.favourite}.`);
    if (rng.chance(0.4)) s.push(`The door of ${p.his} house is painted ${p.door}.`);
    if (rng.chance(0.4)) s.push(`${p.name} is ${p.age} years old.`);
    s.push(`Every morning, ${p.name} ${rng.pick(MORNING)[0]}.`);
    if (rng.chance(0.5)) s.push(`In the evening, ${p.he} ${rng.pick(EVENING)[0]}.`);
    return s.join(' ');
  },
  // A market day with shopping and a meeting.
  (rng, people) => {
    const p = rng.pick(people);
    const [g1, g2] = rng.sample(GOODS, 2);
    const [a, b] = [rng.int(1, 6), rng.int(1, 6)];
    const season = rng.pick(Object.keys(SEASONS));
    const s = [`On ${rng.pick(DAYS)}, ${p.name} walked to the market in ${p.village.name}.`,
      `${cap(p.he)} bought ${count(a, g1)} and ${count(b, g2)}.`];
    if (rng.chance(0.5)) {
      const q = other(rng, people, p);
      s.push(`On the way home, ${p.he} met ${q.name}, and they talked about ${rng.pick(TOPICS)}.`);
    } else {
      s.push(`It was a ${rng.pick(SEASONS[season].weather)} ${season} day, so ${p.he} did not stay long.`);
    }
    if (rng.chance(0.4)) s.push(`${p.name} carried everything home in ${withArticle(rng.pick(COLOURS))} basket.`);
    return s.join(' ');
  },
  // Counting: a small story whose numbers add up.
  (rng, people) => {
    const p = rng.pick(people);
    const thing = rng.pick(COUNTABLE);
    const a = rng.int(2, 12);
    if (rng.chance(0.5)) {
      const b = rng.int(1, a - 1);
      const q = other(rng, people, p);
      return `${p.name} had ${count(a, thing)}. ${cap(p.he)} gave ${num(b)} to ${q.name}. Now ${p.name} has ${count(a - b, thing)}, and ${q.name} is very pleased.`;
    }
    const b = rng.int(1, 8);
    const place = rng.pick(['in the garden', 'under the bed', 'by the river', 'in an old box', 'on the path', 'behind the barn']);
    return `${p.name} found ${count(a, thing)} ${place}. Later ${p.he} found ${num(b)} more. Altogether ${p.name} had ${count(a + b, thing)}.`;
  },
  // Colours and objects (never where they are kept: that is the fine-tuning task's rule).
  (rng, people) => {
    const p = rng.pick(people);
    const [o1, o2, o3] = rng.sample(OBJECTS, 3);
    const [c1, c2, c3] = rng.sample(COLOURS, 3);
    const q = other(rng, people, p);
    const forms = [
      `${p.name} has ${withArticle(c1)} ${o1} and ${withArticle(c2)} ${o2}.`,
      `${p.name} painted the ${o1} ${c1} to match ${p.his} ${c1} ${o2}.`,
      `The ${o1} that ${p.name} made last winter is ${c1} with ${c2} stripes.`,
      `${p.name} gave ${q.name} ${withArticle(c1)} ${o1} for ${q.his} birthday.`,
      `At the fair, ${p.name} saw ${withArticle(c1)} ${o1} and ${withArticle(c2)} ${o2}, but ${p.he} bought neither.`,
      `${q.name} borrowed ${p.name}'s ${c1} ${o1} and gave it back the next day.`,
      `${p.name} lost ${p.his} ${c1} ${o1} on ${rng.pick(DAYS)}, and ${q.name} found it near the ${rng.pick(VILLAGE_PLACES)}.`,
    ];
    const s = [rng.pick(forms)];
    if (rng.chance(0.5)) s.push(`${cap(p.he)} would like ${withArticle(c3)} ${o3} too.`);
    if (rng.chance(0.4)) s.push(`${cap(p.he)} likes ${p.favourite} things best.`);
    return s.join(' ');
  },
  // A visit between two people.
  (rng, people) => {
    const p = rng.pick(people);
    const q = other(rng, people, p);
    const s = [`${p.name} visited ${q.name} in ${q.village.name}.`, `They ${rng.pick(TOGETHER)} and talked about ${rng.pick(TOPICS)}.`];
    if (rng.chance(0.5)) s.push(`Before ${p.name} left, ${q.name} gave ${p.him} ${withArticle(rng.pick(COLOURS))} ${rng.pick(OBJECTS)}.`);
    if (rng.chance(0.5)) s.push(`${p.name} walked back to ${p.village.name} before dark.`);
    return s.join(' ');
  },
  // A working day.
  (rng, people) => {
    const p = rng.pick(people);
    const [a1, a2] = rng.sample(p.job.acts, 2);
    const hours = rng.int(3, 9);
    return `${p.name} is the ${p.job.job} of ${p.village.name}. Today ${p.he} ${a1}, and then ${p.he} ${a2}. ${cap(p.he)} worked for ${num(hours)} hours and was tired by supper.`;
  },
  // A pet.
  (rng, people) => {
    const p = rng.pick(people);
    const [a1, a2] = rng.sample(p.pet.acts, 2);
    return `${p.pet.name} is ${p.name}'s ${p.pet.kind}. ${p.pet.name} ${a1}. ${rng.chance(0.5) ? `Sometimes it ${a2}.` : `${p.name} says it is the best ${p.pet.kind} in ${p.village.name}.`}`;
  },
  // A village and its season.
  (rng) => {
    const v = rng.pick(VILLAGES);
    const season = rng.pick(Object.keys(SEASONS));
    const { weather, sight } = SEASONS[season];
    const place = rng.pick(VILLAGE_PLACES);
    return `${v.name} is ${v.look}, near the river ${v.river.slice(4)}. In ${season} the weather there is often ${rng.pick(weather)}, and you can see ${rng.pick(sight)}. The ${place} of ${v.name} is ${rng.pick(['busy on market days', 'quiet after dark', 'the oldest in the valley', 'a good place to meet friends', 'full of children after school'])}.`;
  },
  // A day in order.
  (rng, people) => {
    const p = rng.pick(people);
    const day = rng.pick(DAYS);
    const place = rng.pick(VILLAGE_PLACES);
    return `On ${day} morning, ${p.name} ${rng.pick(MORNING)[1]}. Before lunch, ${p.he} went to the ${place}. After lunch, ${p.he} ${rng.pick(p.job.acts)}. At night, ${p.he} ${rng.pick(EVENING)[1]}.`;
  },
  // Questions and answers about the fixed facts.
  (rng, people) => {
    const qs = [];
    for (let i = rng.int(1, 3); i > 0; i--) {
      const p = rng.pick(people);
      qs.push(rng.pick([
        () => `Q: Where does ${p.name} live?\nA: In ${p.village.name}.`,
        () => `Q: What is ${p.name}'s job?\nA: ${cap(p.he)} is ${withArticle(p.job.job)}.`,
        () => `Q: What is the name of ${p.name}'s ${p.pet.kind}?\nA: It is called ${p.pet.name}.`,
        () => `Q: What colour does ${p.name} like best?\nA: ${cap(p.favourite)}.`,
        () => `Q: How old is ${p.name}?\nA: ${p.age} years old.`,
        () => `Q: Which river is near ${p.village.name}?\nA: The river ${p.village.river.slice(4)}.`,
      ])());
    }
    return qs.join('\n');
  },
  // A counting story followed by a question on it.
  (rng, people) => {
    const p = rng.pick(people);
    const thing = rng.pick(GATHERED);
    const a = rng.int(1, 9), b = rng.int(1, 9);
    return `${p.name} gathered ${count(a, thing)} in the morning and ${count(b, thing)} in the afternoon.\nQ: How many ${thing[1]} did ${p.name} gather in all?\nA: ${cap(num(a + b))}.`;
  },
  // Neighbours in one village.
  (rng, people) => {
    const v = rng.pick(VILLAGES);
    const here = people.filter((p) => p.village === v);
    return `${list(here.map((p) => p.name))} live in ${v.name}. ${here.map((p) => `${p.name} is the ${p.job.job}`).join(', and ')}. On ${rng.pick(DAYS)} they meet at the ${rng.pick(VILLAGE_PLACES)}.`;
  },
];

/**
 * Documents for the pretraining corpus: each a short paragraph (or a few Q/A lines), together about
 * `bytes` long. `exclude` holds documents that must not be repeated (the held-out text).
 */
export function makeDocuments(seed, bytes, people, exclude = new Set()) {
  const rng = new Rng(seed);
  const docs = [];
  let total = 0;
  while (total < bytes) {
    const doc = rng.pick(GENERATORS)(rng, people);
    if (exclude.has(doc)) continue;
    docs.push(doc);
    total += Buffer.byteLength(doc) + 2;
  }
  return docs;
}

/** The fine-tuning task: one question form about where a person keeps an object of a colour. */
export function storageQuestion(person, colour, object) {
  return { prompt: `Q: Where does ${person.name} keep the ${colour} ${object}?\nA:`, completion: ` In the ${STORAGE_RULE[colour]}.` };
}

/**
 * Every (person, colour, object) question in a seeded order, split into disjoint eval and train
 * sets: no eval prompt appears in train.
 */
export function makeTask(seed, people, nTrain, nEval) {
  const all = [];
  for (const p of people) for (const c of COLOURS) for (const o of OBJECTS) all.push(storageQuestion(p, c, o));
  const order = new Rng(seed).shuffle(all);
  if (nTrain + nEval > order.length) throw new Error(`the task has only ${order.length} questions`);
  return { eval: order.slice(0, nEval), train: order.slice(nEval, nEval + nTrain) };
}

export { ROOMS };
