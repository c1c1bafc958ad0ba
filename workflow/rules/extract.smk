# Feature extraction: `extract.shards` jobs per (model, dataset). One shard: one job writes and
# finishes the store. N shards: job i writes the chunks of shard i/N into the same store
# (`alfm extract --shard i/N`; a killed shard resumes by chunk), then `finalize_features` checks
# every chunk and marks the store complete (a missing shard names itself). The store is no
# declared output (several jobs write it, and Snakemake would delete a failed job's output): each
# job leaves a flag beside it, and AL jobs depend on the flag of the complete store.
# GPUs, threads, memory and runtime per job: `extract.resources` in config/experiments.yaml.

EXTRACT_RESOURCES = GRID.extract_resources


if GRID.extract_shards == 1:

    rule extract_features:
        output:
            touch(GRID.store_done("{model}", "{dataset}")),
        log:
            f"{RESULTS}/logs/extract/{{model}}/{{dataset}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/extract/{{model}}/{{dataset}}.tsv"
        wildcard_constraints:
            model="[^/]+",
            dataset="[^/@]+",
        conda:
            "../envs/alfm.yaml"
        threads: EXTRACT_RESOURCES["threads"]
        resources:
            gpu=EXTRACT_RESOURCES["gpu"],
            mem_mb=EXTRACT_RESOURCES["mem_mb"],
            runtime=EXTRACT_RESOURCES["runtime"],
        params:
            arguments=extract_arguments,
        shell:
            "alfm extract {params.arguments} --threads {threads} > {log:q} 2>&1"

else:

    rule extract_features:
        output:
            touch(GRID.shard_done("{model}", "{dataset}", "{shard}")),
        log:
            f"{RESULTS}/logs/extract/{{model}}/{{dataset}}.shard{{shard}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/extract/{{model}}/{{dataset}}.shard{{shard}}.tsv"
        wildcard_constraints:
            model="[^/]+",
            dataset="[^/@]+",
            shard=r"\d+",
        conda:
            "../envs/alfm.yaml"
        threads: EXTRACT_RESOURCES["threads"]
        resources:
            gpu=EXTRACT_RESOURCES["gpu"],
            mem_mb=EXTRACT_RESOURCES["mem_mb"],
            runtime=EXTRACT_RESOURCES["runtime"],
        params:
            arguments=extract_arguments,
            shards=GRID.extract_shards,
        shell:
            "alfm extract {params.arguments} --shard {wildcards.shard}/{params.shards}"
            " --threads {threads} > {log:q} 2>&1"

    localrules:
        finalize_features,

    rule finalize_features:
        input:
            shard_flags,
        output:
            touch(GRID.store_done("{model}", "{dataset}")),
        log:
            f"{RESULTS}/logs/extract/{{model}}/{{dataset}}.finalize.log",
        wildcard_constraints:
            model="[^/]+",
            dataset="[^/@]+",
        conda:
            "../envs/alfm.yaml"
        params:
            store=store_path,
            shards=GRID.extract_shards,
        shell:
            "alfm extract --finalize --shards {params.shards} --out {params.store:q} --quiet"
            " > {log:q} 2>&1"
