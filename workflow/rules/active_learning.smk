# Active learning: a job advances the runs of one (model, dataset, strategy entry), every seed in
# one process (one run per job with `one_job_per_run: true`), to round {round}, continuing each
# run's state from the previous job (rounds_per_job rounds per job; default all).


rule active_learning:
    input:
        unpack(al_inputs),
    output:
        records=GRID.job_outputs(),
        indices=[f"{path}.indices.npz" for path in GRID.job_outputs()],
    log:
        GRID.job_log(),
    wildcard_constraints:
        model="[^/]+",
        dataset="[^/]+",
        strategy="[^/]+",
        seed=r"\d+",
        round=r"\d+",
    conda:
        "../envs/alfm.yaml"
    threads: 1
    params:
        runs=al_runs,
        states=al_states,
    shell:
        "alfm advance {params.runs:q} --state {params.states:q} --out {output.records:q}"
        " --threads {threads} > {log:q} 2>&1"


localrules:
    runs,


rule runs:
    input:
        run_result_paths(),
