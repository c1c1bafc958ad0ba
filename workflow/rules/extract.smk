# Feature extraction: one job per (model, dataset), the feature store as a directory() output.
# GPU, memory and runtime come from profiles/default/config.yaml.


rule extract_features:
    output:
        directory(f"{FEATURES}/{{model}}/{{dataset}}.zarr"),
    log:
        f"{RESULTS}/logs/extract/{{model}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/extract/{{model}}/{{dataset}}.tsv"
    wildcard_constraints:
        model="[^/]+",
        dataset="[^/]+",
    conda:
        "../envs/alfm.yaml"
    threads: 4
    params:
        arguments=extract_arguments,
    shell:
        "alfm extract {params.arguments} --out {output:q} --threads {threads} > {log:q} 2>&1"
