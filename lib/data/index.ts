export { readJsonl, tokenize, type DataRecord } from './jsonl';
export { type Example } from './example';
export { loadExamples, splitExample, type LoadOptions } from './load';
export { type ChatMessage, type ChatRole } from './chat';
export { Batcher, seededPermutation, type Batch, type BatcherOptions } from './batching';
