"""What the scorer's forkserver imports (`foresight.shards.prestart`) for the explain loop:
its machine code loaded from Numba's cache (compiled, ~3 s, where there is none yet)
once, before any shard worker forks, instead of in every worker of every run."""

from services.scorer import shap_kernel

shap_kernel.warm()
