export { matmul, type MatmulOptions } from './matmul';
export * from './nn';
export { svdLeft, type LeftSVD } from './linalg';
export * from './decode';
