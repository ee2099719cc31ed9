"""TensorFlowOnSpark's ``compat`` helpers for ``map_fun`` code (runs in the TF node).

``export_saved_model(model, export_dir, is_chief=False)``, ``disable_auto_shard(options)``,
``is_gpu_available()``; see ``tfos.node.tf_compat``.
"""
from tfos.node.tf_compat import disable_auto_shard, export_saved_model, is_gpu_available

__all__ = ["export_saved_model", "disable_auto_shard", "is_gpu_available"]
