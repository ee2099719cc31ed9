"""TensorFlow helpers for ``map_fun`` code, under TensorFlowOnSpark's ``compat`` names (TF node).

Exported as ``tfos.compat``. TensorFlow is imported inside each function, so importing this
module does not load it before ``TF_CONFIG`` is set.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile


def export_saved_model(model, export_dir: str, is_chief: bool = False) -> None:
    """Writes ``model`` as a SavedModel with a ``serving_default`` signature to ``export_dir``.

    Under a multi-worker strategy every worker must take part in saving (the variables are
    read collectively), but only the chief's copy is kept: the other workers write to a
    private temporary directory that is removed at once (TensorFlowOnSpark left a
    ``worker_model`` directory in each executor's working directory). Keras's listing of the
    exported endpoints is replaced by one line on the chief naming the directory and its
    signature's inputs and outputs.
    """
    target = export_dir if is_chief else tempfile.mkdtemp(prefix="tfos-worker-model-")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(target)   # Keras 3 and tf-keras (2.13+) alike: an inference SavedModel
    finally:
        if not is_chief:
            shutil.rmtree(target, ignore_errors=True)
    if is_chief:
        inputs = [getattr(i, "name", "?") for i in getattr(model, "inputs", None) or []]
        print(f"tfos: SavedModel exported to {export_dir} (serving_default, inputs {inputs})",
              flush=True)


def disable_auto_shard(options) -> None:
    """Turns TensorFlow's auto-sharding off in ``tf.data.Options`` (each worker already reads
    only its own share, as ``DataFeed.dataset`` does)."""
    import tensorflow as tf
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF


def is_gpu_available() -> bool:
    """Whether TensorFlow sees a GPU in this process (after ``CUDA_VISIBLE_DEVICES``)."""
    import tensorflow as tf
    return len(tf.config.list_physical_devices("GPU")) > 0
