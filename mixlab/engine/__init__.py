"""Running stages: one key function, the memoiser, the job-folder protocol, stage bodies, dispatch to workers and
the run context that plugins see. The recipe's DAG (mixlab.pipeline) sits on top; nothing here imports it."""
