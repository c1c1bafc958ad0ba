# Active learning: a job advances one run (model, dataset, strategy, seed) to round {round},
# continuing the run's state from the previous job (rounds_per_job rounds per job; default all).


rule active_learning:
    input:
        unpack(al_inputs),
    output:
        records=f"{RESULTS}/runs/{{model}}/{{dataset}}/{{strategy}}/seed{{seed}}/upto{{round}}.parquet",
        indices=f"{RESULTS}/runs/{{model}}/{{dataset}}/{{strategy}}/seed{{seed}}/upto{{round}}.parquet.indices.npz",
    log:
        f"{RESULTS}/logs/active_learning/{{model}}/{{dataset}}/{{strategy}}/seed{{seed}}/upto{{round}}.log",
    params:
        run=run_config,
        state=state_dir,
    threads: 1
    wildcard_constraints:
        model="[^/]+",
        dataset="[^/]+",
        strategy="[^/]+",
        seed=r"\d+",
        round=r"\d+",
    run:
        advance_run(input, params, output, log, threads)


localrules:
    runs,


rule runs:
    input:
        run_result_paths(),
