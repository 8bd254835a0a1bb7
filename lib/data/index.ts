export { readJsonl, tokenize, type Example, type DataRecord } from './jsonl';
export { loadExamples, splitExample, type LoadOptions } from './load';
export { type ChatMessage, type ChatRole } from './chat';
export { Batcher, seededPermutation, type Batch, type BatcherOptions } from './batching';
