export { loadTokenizer } from './hub';
export { ByteTokenizer } from './byte';
export { type Tokenizer } from './tokenizer';
