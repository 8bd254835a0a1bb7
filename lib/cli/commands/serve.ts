import { isIP } from 'node:net';
import { LorakitError } from '../../errors';
import { Engine } from '../../generate/engine';
import { startServer } from '../../serve/server';
import { command, print } from '../run';

/** Whether `host` is reachable from this machine only. */
function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, '$1');
  if (bare === 'localhost') return true;
  if (isIP(bare) === 4) return bare.startsWith('127.');
  return bare === '::1' || bare.startsWith('::ffff:127.');
}

/** `name=dir` pairs, checked before the (slow) model load. */
function parseAdapters(specs: readonly string[]): [string, string][] {
  const seen = new Set<string>();
  return specs.map((spec) => {
    const eq = spec.indexOf('=');
    if (eq <= 0 || eq === spec.length - 1) throw new LorakitError('ERR_INVALID_ARG', `--adapters takes name=dir pairs (the name clients send as 'model'), got '${spec}'`);
    const name = spec.slice(0, eq);
    if (seen.has(name)) throw new LorakitError('ERR_INVALID_ARG', `--adapters names '${name}' twice`);
    seen.add(name);
    return [name, spec.slice(eq + 1)];
  });
}

export const serveCommand = command({
  usage: 'serve',
  describe: 'Serve a model and its adapters over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models)',
  options: (a) =>
    a
      .option('model', { type: 'string', demandOption: true, describe: 'base model folder (config.json, safetensors, tokenizer.json); its folder name is its model id' })
      .option('adapters', { type: 'string', array: true, default: [] as string[], describe: "PEFT adapters as name=dir; a request's 'model' picks one by name (repeatable)" })
      .option('host', { type: 'string', default: '127.0.0.1', describe: 'address to listen on (loopback: this machine only)' })
      .option('port', { type: 'number', default: 8000, describe: 'port to listen on (0: any free port)' })
      .option('api-key', { type: 'string', describe: 'require `Authorization: Bearer <key>` on every request [default: $LORAKIT_API_KEY]' })
      .option('allow-remote', { type: 'boolean', default: false, describe: 'listen on a non-loopback address without an API key' })
      .option('quantize', { type: 'boolean', default: false, describe: 'store the base weights as NF4, as QLoRA trained against them' })
      .option('max-batch', { type: 'number', describe: 'most requests decoded together [32]' })
      .option('max-queue', { type: 'number', describe: 'most requests waiting for a place in the batch; more are answered 429 [256]' })
      .option('max-tokens-limit', { type: 'number', default: 2048, describe: "the largest max_tokens a request may ask for" }),
  run: async (argv) => {
    // An empty variable is no key, as an unset one is.
    const apiKey = argv.apiKey ?? (process.env.LORAKIT_API_KEY || undefined);
    if (!isLoopback(argv.host) && apiKey === undefined && !argv.allowRemote)
      throw new LorakitError(
        'ERR_INVALID_ARG',
        `--host ${argv.host} can be reached from other machines, and without an API key anyone who reaches it can run generations on this machine ` +
          'and use every adapter it serves; give --api-key (or LORAKIT_API_KEY), or --allow-remote to serve without one (behind a proxy that authenticates, say)',
      );
    const adapters = parseAdapters(argv.adapters);
    const engine = Engine.load(argv.model, { maxBatch: argv.maxBatch, maxQueue: argv.maxQueue, model: { quantize: argv.quantize } });
    try {
      for (const [name, dir] of adapters) engine.addAdapter(name, dir);
      const server = await startServer(engine, { host: argv.host, port: argv.port, apiKey, maxTokensLimit: argv.maxTokensLimit });
      print(`lorakit serve: listening on ${server.url}/v1 (OpenAI base URL)`);
      print(`models: ${[engine.modelName, ...engine.adapterNames].join(', ')}`);
      // A second signal during shutdown kills the process as usual: the handlers are gone by then.
      const signal = await new Promise<NodeJS.Signals>((resolve) => {
        const stop = (s: NodeJS.Signals): void => {
          process.off('SIGTERM', stop);
          process.off('SIGINT', stop);
          resolve(s);
        };
        process.on('SIGTERM', stop);
        process.on('SIGINT', stop);
      });
      print(`lorakit serve: ${signal}: finishing the requests in flight, then exiting`);
      await server.close();
    } finally {
      engine.dispose();
    }
  },
});
