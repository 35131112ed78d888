"""Model families, loading, generation, freezing and export."""

# The attention functions a loaded model is switched to must be registered in every process that runs
# one, spawned workers too, which unpickle a model without loading it.
from cme_vlm.models import attention as _attention  # noqa: F401
