"""Keras training steps per second on N worker processes of this host, side by side in one run:
TensorFlow's MultiWorkerMirroredStrategy (RING all-reduce; tf-keras, since Keras 3 ``fit``
fails under it) against ``tfos.collective``'s DistributedOptimizer with tf-keras and with
Keras 3. The same model, batch and steps everywhere; rank 0 times the steps after a warm-up
epoch. Prints a table and the ratios to MWMS; asserts nothing. Usage::

    .venv/bin/python examples/benchmarks/keras_bench.py [--procs 3] [--steps 60] [--model mlp]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from startup_bench import free_ports  # this directory, as the scripts run

WORKER = r"""
import json, os, sys, time
mode, steps, batch, model_kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import numpy as np
import tensorflow as tf
if mode == "mwms":
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    rank, size = strategy.cluster_resolver.task_id, strategy.num_replicas_in_sync
else:
    import tfos.collective as hvd
    hvd.init(secret=bytes.fromhex(os.environ["BENCH_SECRET"]))
    rank, size = hvd.rank(), hvd.size()
keras = tf.keras

def build():
    if model_kind == "cnn":
        layers = [keras.layers.Input((28, 28, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
                  keras.layers.MaxPooling2D(), keras.layers.Conv2D(64, 3, activation="relu"),
                  keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                  keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)]
    else:
        layers = [keras.layers.Input((28, 28, 1)), keras.layers.Flatten(),
                  keras.layers.Dense(512, activation="relu"),
                  keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)]
    return keras.Sequential(layers)

rng = np.random.default_rng(rank)
x = rng.random((batch * steps, 28, 28, 1), dtype=np.float32)
y = rng.integers(0, 10, batch * steps)
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
data = data.with_options(options)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
callbacks = []
if mode == "mwms":
    with strategy.scope():
        model = build()
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
else:
    model = build()
    model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(0.01)), loss=loss)
    callbacks = [hvd.BroadcastGlobalVariablesCallback(0)]

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start

timer = Timer()
model.fit(data, epochs=1, steps_per_epoch=10, verbose=0, callbacks=callbacks)   # warm-up
model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
if rank == 0:
    print("RESULT", json.dumps({"steps_per_s": steps / timer.seconds,
                                "keras": type(model).__module__.split(".")[0]}))
"""

MODES = {"mwms": {"TF_USE_LEGACY_KERAS": "1"}, "tfos-tf-keras": {"TF_USE_LEGACY_KERAS": "1"},
         "tfos-keras3": {}}


def run(mode: str, procs: int, steps: int, batch: int, model: str) -> dict:
    workers = [f"127.0.0.1:{p}" for p in free_ports(procs)]
    secret = os.urandom(32).hex()
    runs = []
    for index in range(procs):
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        env.update(MODES[mode], TF_CPP_MIN_LOG_LEVEL="2", BENCH_SECRET=secret,
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                         "task": {"type": "worker", "index": index}}))
        runs.append(subprocess.Popen([sys.executable, "-c", WORKER, mode, str(steps), str(batch),
                                      model], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))
    outputs = [run.communicate(timeout=900) for run in runs]
    found = [line for line in outputs[0][0].splitlines() if line.startswith("RESULT ")]
    if not found:
        raise RuntimeError(f"{mode}: rank 0 did not report: {outputs[0][1][-3000:]}")
    return json.loads(found[0].split(" ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    args = parser.parse_args()
    results = {mode: run(mode, args.procs, args.steps, args.batch, args.model) for mode in MODES}
    base = results["mwms"]["steps_per_s"]
    print(f"{args.procs} workers, {args.model}, batch {args.batch}, {args.steps} timed steps")
    print(f"{'training':<16} {'keras':<9} {'steps/s':>8} {'vs MWMS':>8}")
    for mode, result in results.items():
        print(f"{mode:<16} {result['keras']:<9} {result['steps_per_s']:>8.1f} "
              f"{result['steps_per_s'] / base:>7.2f}x")


if __name__ == "__main__":
    main()
