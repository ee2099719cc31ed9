"""The TensorFlow layer of ``tfos.collective``: operations on tensors, the gradient tape, the
Keras optimizer and callbacks. TensorFlow is imported on first use.

Every collective here reaches ``rdma.collective`` through one ``tf.numpy_function`` call. A
step's gradients go as ONE call per dtype (fused into one flat buffer), and the calls of one
step are chained by control dependencies, so TensorFlow never runs two collectives of a step
at once or in a different order on different ranks.
"""
from __future__ import annotations

import numpy as np

from tfos.collective._group import group as _group


def _tf():
    import tensorflow as tf
    return tf




def _run(fn, tensor, dtype, name):
    """``fn(numpy array) -> numpy array`` as one TensorFlow op (eager or inside tf.function)."""
    tf = _tf()
    if dtype == tf.bfloat16:       # numpy has no bfloat16 arithmetic of its own
        return tf.cast(_run(fn, tf.cast(tensor, tf.float32), tf.float32, name), tf.bfloat16)
    return tf.numpy_function(lambda array: np.asarray(fn(array), dtype.as_numpy_dtype),
                             [tensor], dtype, stateful=True, name=name)


def allreduce(tensor, op: str = "mean", name: str | None = None):
    """The elementwise ``op`` (Average, Sum, Min, Max) of ``tensor`` over every rank."""
    tf = _tf()
    tensor = tf.convert_to_tensor(tensor)
    out = _run(lambda a: _group().allreduce(a, op), tensor, tensor.dtype,
               name or "tfos_allreduce")
    out.set_shape(tensor.shape)
    return out


def grouped_allreduce(tensors, op: str = "mean"):
    """``allreduce`` of each of ``tensors``, fused: one call per dtype, run in a fixed order."""
    tf = _tf()
    tensors = [tf.convert_to_tensor(t) for t in tensors]
    by_dtype: dict = {}
    for index, tensor in enumerate(tensors):
        by_dtype.setdefault(tensor.dtype, []).append(index)
    out = [None] * len(tensors)
    previous = []
    for dtype in sorted(by_dtype, key=lambda d: d.name):
        indices = by_dtype[dtype]
        parts = [tf.reshape(tensors[i], [-1]) for i in indices]
        with tf.control_dependencies(previous):
            fused = allreduce(tf.concat(parts, 0) if len(parts) > 1 else parts[0], op,
                              name=f"tfos_allreduce_{dtype.name}")
        previous = [fused]
        pieces = tf.split(fused, [tf.size(p) for p in parts]) if len(parts) > 1 else [fused]
        for i, piece in zip(indices, pieces):
            out[i] = tf.reshape(piece, tf.shape(tensors[i]))
            out[i].set_shape(tensors[i].shape)
    return out


def allgather(tensor, name: str | None = None):
    """Every rank's ``tensor`` concatenated along the first axis, in rank order (all ranks'
    tensors must have one shape)."""
    tf = _tf()
    tensor = tf.convert_to_tensor(tensor)
    out = _run(lambda a: _group().allgather(np.reshape(a, (1, -1) if a.ndim == 0 else a.shape))
               .reshape((-1, *a.shape[1:])), tensor, tensor.dtype, name or "tfos_allgather")
    if tensor.shape.rank:
        first = tensor.shape[0]
        out.set_shape([None if first is None else first * _group().size, *tensor.shape[1:]])
    return out


def broadcast(tensor, root_rank: int = 0, name: str | None = None):
    """``root_rank``'s ``tensor`` on every rank."""
    tf = _tf()
    tensor = tf.convert_to_tensor(tensor)
    out = _run(lambda a: _group().broadcast(a, root_rank), tensor, tensor.dtype,
               name or "tfos_broadcast")
    out.set_shape(tensor.shape)
    return out


def barrier() -> None:
    """Returns once every rank has called it."""
    _group().barrier()


def broadcast_variables(variables, root_rank: int = 0) -> None:
    """Assigns ``root_rank``'s values to ``variables`` on every rank (one call per dtype)."""
    tf = _tf()
    variables = list(variables)
    by_dtype: dict = {}
    for variable in variables:     # Keras 3 variables name their dtype with a string
        by_dtype.setdefault(tf.as_dtype(variable.dtype), []).append(variable)
    for dtype in sorted(by_dtype, key=lambda d: d.name):
        group = by_dtype[dtype]
        flat = tf.concat([tf.reshape(tf.convert_to_tensor(v), [-1]) for v in group], 0)
        values = broadcast(flat, root_rank, name=f"tfos_broadcast_{dtype.name}")
        offset = 0
        for variable in group:
            count = int(np.prod(variable.shape))
            variable.assign(tf.reshape(values[offset:offset + count], variable.shape))
            offset += count


def _dense(gradient):
    tf = _tf()
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


def _reduce_gradients(gradients, op: str):
    """``gradients`` (a list, Nones kept) all-reduced in one fused call per dtype."""
    present = [i for i, g in enumerate(gradients) if g is not None]
    reduced = grouped_allreduce([_dense(gradients[i]) for i in present], op) if present else []
    out = list(gradients)
    for i, value in zip(present, reduced):
        out[i] = value
    return out


class DistributedGradientTape:
    """A ``tf.GradientTape`` whose ``gradient()`` averages (``op``) the gradients over every
    rank: ``tape = hvd.DistributedGradientTape(tape)`` after the forward pass."""

    def __init__(self, tape, op: str = "mean"):
        self._tape, self._op = tape, op

    def gradient(self, target, sources, output_gradients=None, **kwargs):
        tf = _tf()
        gradients = self._tape.gradient(target, sources, output_gradients, **kwargs)
        flat = tf.nest.flatten(gradients, expand_composites=False)
        return tf.nest.pack_sequence_as(gradients, _reduce_gradients(flat, self._op))

    def __getattr__(self, name):
        return getattr(self._tape, name)


def DistributedOptimizer(optimizer, op: str = "mean"):
    """``optimizer`` (Keras 3 or tf-keras) that averages (``op``) each step's gradients over
    every rank before applying them: ``model.compile(optimizer=hvd.DistributedOptimizer(opt))``.

    The returned optimizer is of a subclass named like the original and saved as the original,
    so a saved model loads without tfos."""
    base = type(optimizer)
    keras3 = hasattr(base, "apply") and "tf_keras" not in base.__module__
    if keras3:     # Keras 3: apply_gradients() and the train step both end in apply()
        def apply(self, grads, trainable_variables=None):
            return base.apply(self, _reduce_gradients(list(grads), op), trainable_variables)
        methods = {"apply": apply}
    else:          # tf-keras: minimize() ends in apply_gradients()
        def apply_gradients(self, grads_and_vars, *args, **kwargs):
            pairs = list(grads_and_vars)
            grads = _reduce_gradients([g for g, _ in pairs], op)
            return base.apply_gradients(self, list(zip(grads, [v for _, v in pairs])),
                                        *args, **kwargs)
        methods = {"apply_gradients": apply_gradients}
    methods.update(__module__=base.__module__, __qualname__=base.__qualname__)
    distributed = type(base.__name__, (base,), methods)
    return distributed.from_config(optimizer.get_config())


def _callback_base():
    return _tf().keras.callbacks.Callback


def BroadcastGlobalVariablesCallback(root_rank: int = 0):
    """A Keras callback that gives every rank ``root_rank``'s weights when training starts
    (and its optimizer state after the first step, once the optimizer has built it)."""

    class BroadcastGlobalVariables(_callback_base()):
        def __init__(self):
            super().__init__()
            self._optimizer_done = False

        def on_train_begin(self, logs=None):
            broadcast_variables(self.model.variables, root_rank)

        def on_train_batch_end(self, batch, logs=None):
            if self._optimizer_done:
                return
            self._optimizer_done = True
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is not None and optimizer.variables:
                variables = optimizer.variables
                broadcast_variables(variables() if callable(variables) else variables,
                                    root_rank)

    return BroadcastGlobalVariables()


def MetricAverageCallback():
    """A Keras callback that replaces each epoch's logged metrics with their average over
    every rank (so every rank, and the chief's History, sees the cluster's numbers)."""

    class MetricAverage(_callback_base()):
        def on_epoch_end(self, epoch, logs=None):
            if not logs:
                return
            names = sorted(name for name, value in logs.items() if np.ndim(value) == 0)
            values = _group().allreduce(np.array([float(logs[n]) for n in names]), "mean")
            for name, value in zip(names, values):
                logs[name] = float(value)

    return MetricAverage()
