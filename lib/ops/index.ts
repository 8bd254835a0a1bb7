export { matmul, type MatmulOptions } from './matmul';
export * from './nn';
