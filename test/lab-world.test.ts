/**
 * The lab's invented world against the pre-training corpus it was generated for (every fact of every
 * person is stated there), and the behaviour task rebuilt here from those facts: the questions in the
 * documented order, shuffled by the asset builder's generator (pinned by the knowledge task, which
 * must equal the shipped split), a quarter held out.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LAB_BASE, behaviourTask, knowledgeTask, makePeople, makeTask, STORAGE_RULE, COLOURS, OBJECTS, type Pair } from '../lib/lab';
import { Rng } from '../lib/lab/world';

const corpus = fs.readFileSync(path.join(LAB_BASE, 'corpus.txt'), 'utf8');
const capital = (s: string) => s[0]!.toUpperCase() + s.slice(1);

describe('the world', () => {
  test('every person\'s job, pet and favourite colour, and every village\'s river, as the corpus states them', () => {
    const people = makePeople();
    expect(people.map((p) => p.name)).toHaveLength(24);
    for (const p of people) {
      expect(corpus).toContain(`${p.name} is the ${p.job} of ${p.village.name}.`);
      expect(corpus).toContain(`${p.pet.name} is ${p.name}'s ${p.pet.kind}.`);
      expect(corpus).toContain(`${p.name} lives in ${p.village.name}.`);
      expect(corpus).toContain(`Q: What colour does ${p.name} like best?\nA: ${capital(p.favourite)}.`);
      expect(corpus).toContain(`Q: Which river is near ${p.village.name}?\nA: The river ${p.village.river}.`);
      expect(corpus).toContain(`Q: How old is ${p.name}?\nA: ${p.age} years old.`);
    }
    // Every pet has its own name.
    expect(new Set(people.map((p) => p.pet.name)).size).toBe(24);
  });

  test('the knowledge task: every (person, colour, object) question, answered by the storage rule', () => {
    const { train, eval: held } = knowledgeTask();
    expect([train.length, held.length]).toEqual([2000, 150]);
    for (const q of [...train, ...held]) {
      const m = /^Q: Where does (\w+) keep the (\w+) (\w+)\?\nA:$/.exec(q.prompt)!;
      expect(m).not.toBeNull();
      expect(OBJECTS).toContain(m[3]);
      expect(q.completion).toBe(` In the ${STORAGE_RULE[m[2] as (typeof COLOURS)[number]]}.`);
    }
    // Smaller splits are the front of the same order: held-out first, then training.
    const small = knowledgeTask(10, 5);
    expect(small.eval).toEqual(held.slice(0, 5));
    expect(small.train).toEqual(held.slice(5, 15));
    // 24 people x 8 colours x 20 objects.
    expect(knowledgeTask(3840 - 40, 40).train).toHaveLength(3800);
    expect(() => knowledgeTask(3840 - 40, 41)).toThrow('the task has only 3840 questions');
    expect(makeTask('knowledge')).toEqual(knowledgeTask());
  });

  test('the behaviour task: the facts as one-key JSON answers, shuffled with seed 11, a quarter held out', () => {
    const people = makePeople();
    const all: Pair[] = [];
    for (const p of people)
      all.push(
        { prompt: `Q: Where does ${p.name} live?\nA:`, completion: ` {"village":"${p.village.name}"}` },
        { prompt: `Q: What is ${p.name}'s job?\nA:`, completion: ` {"job":"${p.job}"}` },
        { prompt: `Q: What is the name of ${p.name}'s ${p.pet.kind}?\nA:`, completion: ` {"pet":"${p.pet.name}"}` },
        { prompt: `Q: What colour does ${p.name} like best?\nA:`, completion: ` {"colour":"${p.favourite}"}` },
        { prompt: `Q: How old is ${p.name}?\nA:`, completion: ` {"age":${p.age}}` },
      );
    // The eight villages, in the order people are assigned to them.
    for (const p of people.slice(0, 8)) all.push({ prompt: `Q: Which river is near ${p.village.name}?\nA:`, completion: ` {"river":"${p.village.river}"}` });
    const order = new Rng(11).shuffle(all);
    const t = behaviourTask();
    expect(t.eval).toEqual(order.slice(0, 32));
    expect(t.train).toEqual(order.slice(32));
    expect(makeTask('behaviour')).toEqual(t);
    // The answers are facts the corpus states in prose.
    const mira = people[0]!;
    expect([mira.name, mira.village.name, mira.job, mira.pet.kind, mira.favourite, mira.age]).toEqual(['Mira', 'Ashford', 'baker', 'owl', 'blue', 19]);
    expect(corpus).toContain(`Q: What colour does Mira like best?\nA: ${capital(mira.favourite)}.`);
  });

  test('the generator shuffles into a permutation, the same for the same seed, another for another', () => {
    const list = Array.from({ length: 50 }, (_, i) => i);
    const a = new Rng(5).shuffle(list), b = new Rng(5).shuffle(list), c = new Rng(6).shuffle(list);
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect([...a].sort((x, y) => x - y)).toEqual(list);
    expect(a).not.toEqual(list);
    const r = new Rng(9);
    for (let i = 0; i < 100; i++) {
      const f = r.float();
      expect(f).toBeGreaterThanOrEqual(0);
      expect(f).toBeLessThan(1);
    }
  });
});
