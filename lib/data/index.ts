export { readJsonl, tokenize, type Example, type DataRecord } from './jsonl';
