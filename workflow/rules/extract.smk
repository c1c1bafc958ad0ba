# Feature extraction: one job per (model, dataset), the feature store as a directory() output.
# GPU, memory and runtime come from profiles/default/config.yaml.


rule extract_features:
    output:
        directory(f"{FEATURES}/{{model}}/{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/extract/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{model}}/{{dataset}}.tsv"
    threads: 4
    wildcard_constraints:
        model="[^/]+",
        dataset="[^/]+",
    run:
        extract_store(wildcards, output, log, threads)
