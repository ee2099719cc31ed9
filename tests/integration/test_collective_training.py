"""tfos collectives training on a real tfos cluster of 3 (a chief and two workers, Keras 3):

* the same model, initial weights and data trained with MultiWorkerMirroredStrategy (its RING
  all-reduce) and with ``tfos.collective``: the final weights agree within float32 rounding of
  the different summation orders (rtol 1e-5);
* Keras 3 ``model.fit`` (no TF_USE_LEGACY_KERAS) with ``DistributedOptimizer`` and the
  callbacks: every worker ends with the very same weights, and the model learned.
"""
import numpy as np
import pytest

import tfos

STEPS, BATCH, LR = 20, 16, 0.05
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture
def spark_local_3(spark_sessions):
    return spark_sessions.get("local[3]")


def train_both_ways(args, ctx):
    import hashlib
    import os

    import keras
    import tensorflow as tf

    import tfos.collective as hvd
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    # TensorFlow's strategy first: it must exist before other TensorFlow work in the process.
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    rank = 0 if ctx.job_name == "chief" else ctx.task_index + 1
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3 * BATCH * STEPS, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 3.0, 0.5], "float32") + 0.3).astype("float32")
    w0 = rng.normal(size=4).astype("float32")
    mine = [(x[i:i + 3 * BATCH][rank::3], y[i:i + 3 * BATCH][rank::3])
            for i in range(0, len(x), 3 * BATCH)]          # this worker's part of each step

    def loss_of(w, b, xb, yb):
        return tf.reduce_mean((tf.linalg.matvec(xb, w) + b - yb) ** 2)

    with strategy.scope():
        mw = tf.Variable(w0, aggregation=tf.VariableAggregation.MEAN)
        mb = tf.Variable(0.0, aggregation=tf.VariableAggregation.MEAN)

    @tf.function
    def mwms_step(xb, yb):
        def replica():
            with tf.GradientTape() as tape:
                loss = loss_of(mw, mb, xb, yb)
            gw, gb = tape.gradient(loss, [mw, mb])
            mw.assign_sub(LR * gw)      # MEAN aggregation: MWMS all-reduces the updates
            mb.assign_sub(LR * gb)
        strategy.run(replica)

    for xb, yb in mine:
        mwms_step(xb, yb)

    hvd.init(ctx)
    assert hvd.rank() == rank and hvd.size() == 3
    tw, tb = tf.Variable(w0), tf.Variable(0.0)

    @tf.function
    def tfos_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_of(tw, tb, xb, yb)
        gw, gb = hvd.DistributedGradientTape(tape).gradient(loss, [tw, tb])
        tw.assign_sub(LR * gw)
        tb.assign_sub(LR * gb)

    for xb, yb in mine:
        tfos_step(xb, yb)

    # Keras 3 fit: each worker starts from its own random weights, on its own shard.
    keras.utils.set_random_seed(10 + rank)
    # 17,281 weights: the fused gradients (69 KB) take the shared-memory all-reduce.
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(128, "relu"),
                              keras.layers.Dense(128, "relu"), keras.layers.Dense(1)])
    model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.Adam(0.02)), loss="mse")
    history = model.fit(x[rank::3], y[rank::3], batch_size=BATCH, epochs=3, verbose=0,
                        callbacks=[hvd.BroadcastGlobalVariablesCallback(0),
                                   hvd.MetricAverageCallback(), ctx.progress_callback()])
    return {"mwms": mw.numpy().tolist() + [float(mb.numpy())],
            "tfos": tw.numpy().tolist() + [float(tb.numpy())],
            "keras": [hashlib.sha256(w.numpy().tobytes()).hexdigest() for w in model.weights],
            "keras_module": type(model).__module__, "loss": history.history["loss"],
            "transports": hvd.transports()}


def test_mwms_and_tfos_collectives_agree_and_keras3_fit_trains_on_three_workers(spark_local_3):
    with tfos.TFCluster.run(spark_local_3, train_both_ways, {}, num_executors=3,
                            master_node="chief", legacy_keras=False) as cluster:
        cluster.shutdown(timeout=300)
    results = cluster.results
    assert set(results) == {"chief:0", "worker:0", "worker:1"}
    chief = results["chief:0"]
    for result in results.values():
        # Same model, same data, two all-reduces: the same weights up to summation order.
        np.testing.assert_allclose(result["tfos"], chief["mwms"], **TOLERANCE)
        np.testing.assert_allclose(result["mwms"], chief["mwms"], **TOLERANCE)
        assert result["keras_module"].startswith("keras."), "Keras 3, not tf-keras"
        assert result["keras"] == chief["keras"], "every worker holds the very same weights"
        assert result["loss"] == chief["loss"]
        assert result["transports"] == {"from_prev": "shm://", "to_next": "shm://",
                                        "allreduce": "shared-memory"}
    assert chief["tfos"] != pytest.approx(list(np.zeros(5))), "it trained"
    assert chief["loss"][-1] < 0.5 * chief["loss"][0], chief["loss"]
