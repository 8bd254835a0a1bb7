/**
 * Sweeps on Kubernetes: one Indexed Job whose pod at completion index i runs
 * `lorakit sweep run <spec> --index i`, every pod on one shared volume that holds the spec, the model,
 * the data and the results. As on SLURM, the results folder is the only coordination.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LorakitError, LorakitTypeError } from '../errors';
import { isSameOrInside, makeDir } from '../io/fs';
import { writeJsonFile } from '../io/config';
import { listRuns } from './runner';
import { jobName } from './slurm';
import { type SweepSpec } from './spec';

export interface K8sOptions {
  image: string;
  namespace?: string;
  /** Pods at once; default every run. */
  parallelism?: number;
  gpusPerTask?: number;
  /** The extended resource a GPU is requested as. */
  gpuResource?: string;
  cpusPerTask?: number;
  /** The PersistentVolumeClaim every pod mounts: it must hold the spec, its inputs and its out. */
  pvc: string;
  /** Where the claim is mounted in the pod; default the spec's folder, so the spec's paths mean the same there. */
  mount?: string;
  /** Retries of one index before that index counts as failed (the rest go on). */
  backoffLimitPerIndex?: number;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function bad(what: string, expected: string, got: unknown): LorakitTypeError {
  return new LorakitTypeError('ERR_INVALID_ARG', `sweep: submit --k8s: ${what} must be ${expected}, got ${JSON.stringify(got)}`);
}

/** The Indexed Job (batch/v1) that runs every run of the sweep in `specFile`. */
export function indexedJob(spec: SweepSpec, specFile: string, o: K8sOptions): Record<string, unknown> {
  const n = listRuns(spec).length;
  const namespace = o.namespace ?? 'default';
  if (typeof o.image !== 'string' || !o.image || /\s/.test(o.image)) throw bad('--image', 'a container image with lorakit on its PATH', o.image);
  if (!DNS_LABEL.test(namespace) || namespace.length > 63) throw bad('--namespace', 'a namespace name (lowercase letters, digits and -)', namespace);
  if (typeof o.pvc !== 'string' || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(o.pvc)) throw bad('--pvc', 'the name of a PersistentVolumeClaim that every pod can mount (ReadWriteMany)', o.pvc);
  for (const [k, v, min] of [['--parallelism', o.parallelism, 1], ['--gpus-per-task', o.gpusPerTask, 0], ['--cpus-per-task', o.cpusPerTask, 1], ['--backoff-limit-per-index', o.backoffLimitPerIndex, 0]] as const)
    if (v !== undefined && !(Number.isInteger(v) && v >= min)) throw bad(k, `an integer >= ${min}`, v);
  const gpuResource = o.gpuResource ?? 'nvidia.com/gpu';
  if (!/^[a-z0-9.-]+\/[a-z0-9._-]+$/i.test(gpuResource)) throw bad('--gpu-resource', 'an extended resource name such as nvidia.com/gpu or amd.com/gpu', gpuResource);
  const specPath = path.resolve(specFile);
  const mount = path.resolve(o.mount ?? path.dirname(specPath));
  // A pod sees only the volume: every file the runs read or write must be on it, at the same path.
  const needed: Record<string, string | undefined> = { 'the spec': specPath, "the spec's out": spec.out, 'base.model': spec.base.model, 'base.data': spec.base.data, 'base.evalData': spec.base.evalData, 'base.retainData': spec.base.retainData };
  for (const [what, p] of Object.entries(needed))
    if (p !== undefined && !isSameOrInside(path.resolve(p), mount))
      throw new LorakitError('ERR_INVALID_ARG', `sweep: submit --k8s: ${what} '${p}' is not inside the shared volume's mount '${mount}'; every pod reads and writes the sweep there (put it under --mount)`);

  const resources: Record<string, Record<string, string>> = {};
  if (o.gpusPerTask) resources.limits = { [gpuResource]: String(o.gpusPerTask) };
  if (o.cpusPerTask) resources.requests = { cpu: String(o.cpusPerTask) };
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: { name: jobName(spec), namespace, labels: { 'app.kubernetes.io/name': 'lorakit', 'app.kubernetes.io/component': 'sweep' } },
    spec: {
      completionMode: 'Indexed',
      completions: n,
      parallelism: Math.min(o.parallelism ?? n, n),
      // Per index: one run failing (bad node, OOM) is retried on its own and never fails the others.
      backoffLimitPerIndex: o.backoffLimitPerIndex ?? 1,
      template: {
        metadata: { labels: { 'app.kubernetes.io/name': 'lorakit', 'app.kubernetes.io/component': 'sweep' } },
        spec: {
          // backoffLimitPerIndex requires Never: a failed pod is replaced, not restarted in place.
          restartPolicy: 'Never',
          containers: [
            {
              name: 'run',
              image: o.image,
              // The kubelet expands $(JOB_COMPLETION_INDEX), which the Job controller sets in every pod of an Indexed Job.
              command: ['lorakit', 'sweep', 'run', specPath, '--index', '$(JOB_COMPLETION_INDEX)'],
              ...(o.cpusPerTask ? { env: [{ name: 'LORAKIT_NUM_THREADS', value: String(o.cpusPerTask) }] } : {}),
              ...(Object.keys(resources).length ? { resources } : {}),
              volumeMounts: [{ name: 'sweep', mountPath: mount }],
            },
          ],
          volumes: [{ name: 'sweep', persistentVolumeClaim: { claimName: o.pvc } }],
        },
      },
    },
  };
}

/** Where a kubeconfig is, as @kubernetes/client-node's loadFromDefault looks for one; null when none. */
export function kubeconfigFound(): string | null {
  const env = process.env.KUBECONFIG?.split(path.delimiter).find((f) => f && fs.existsSync(f));
  if (env) return env;
  const home = path.join(os.homedir(), '.kube', 'config');
  if (fs.existsSync(home)) return home;
  if (process.env.KUBERNETES_SERVICE_HOST) return 'in-cluster service account';
  return null;
}

/** Writes the manifest to out/k8s/job.json (`kubectl apply -f` takes JSON); returns its path. */
export function writeManifest(spec: SweepSpec, manifest: Record<string, unknown>): string {
  const file = path.join(spec.out, 'k8s', 'job.json');
  makeDir('sweep', path.dirname(file));
  writeJsonFile('sweep', file, manifest);
  return file;
}

// @kubernetes/client-node is an ES module: a real import(), which TypeScript's CommonJS output would turn into require().
const importEsm = new Function('m', 'return import(m)') as (m: string) => Promise<unknown>;

/** Creates the Job through the cluster's API with the official client; returns the created Job's uid. */
export async function applyJob(manifest: Record<string, unknown>): Promise<string> {
  let k8s: typeof import('@kubernetes/client-node');
  try {
    k8s = (await importEsm('@kubernetes/client-node')) as typeof import('@kubernetes/client-node');
  } catch (e) {
    throw new LorakitError('ERR_IO', `sweep: submit --k8s: cannot load @kubernetes/client-node (${e instanceof Error ? e.message.split('\n')[0] : String(e)}); apply the written manifest with kubectl apply -f`);
  }
  const kc = new k8s.KubeConfig();
  kc.loadFromDefault();
  const api = kc.makeApiClient(k8s.BatchV1Api);
  const meta = manifest.metadata as { name: string; namespace: string };
  try {
    const job = await api.createNamespacedJob({ namespace: meta.namespace, body: manifest as never });
    return job.metadata?.uid ?? '';
  } catch (e) {
    const code = (e as { code?: number }).code;
    const why = code === 409 ? `a Job named ${meta.name} exists in namespace ${meta.namespace}: delete it (kubectl delete job ${meta.name} -n ${meta.namespace}) and submit again; finished runs are skipped` : e instanceof Error ? e.message.split('\n')[0] : String(e);
    throw new LorakitError('ERR_IO', `sweep: submit --k8s: the cluster at ${kc.getCurrentCluster()?.server ?? '(no cluster)'} refused the Job: ${why}`);
  }
}
