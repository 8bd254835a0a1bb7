/** The data tier's shared vocabulary: what every reader produces and every consumer (batching, training, evaluation) takes. */

/** A tokenized sequence; labels are aligned with the ids (-100 where no loss is taken). */
export interface Example {
  inputIds: number[];
  labels: number[];
}
