"""What the scorer's forkserver imports (`foresight.shards.prestart`) for its compiled loops
(the explain loop and the factor JSON loop): their machine code loaded from Numba's cache
(compiled, a few seconds, where there is none yet) once, before any shard worker forks,
instead of in every worker of every run."""

from services.scorer import factor_kernel, shap_kernel

shap_kernel.warm()
factor_kernel.warm()
