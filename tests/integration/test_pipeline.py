"""Spark ML stages (tfos.pipeline) on a real local-cluster: TFModel scores with a SavedModel."""
import numpy as np
import pytest

import tfos
from tfos.pipeline import TFModel


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    """A SavedModel of y = 3.14 a + 1.618 b, its input named 'features'."""
    import tensorflow as tf
    model = tf.keras.Sequential([tf.keras.Input((2,), name="features"),
                                 tf.keras.layers.Dense(1)])
    model.layers[-1].set_weights([np.array([[3.14], [1.618]], np.float32),
                                  np.zeros(1, np.float32)])
    export_dir = str(tmp_path_factory.mktemp("linear") / "model")
    tfos.compat.export_saved_model(model, export_dir, is_chief=True)
    return export_dir


def test_tfmodel_scores_in_row_order_without_a_cluster_and_survives_persistence(
        spark_local_cluster_4x1, linear_model, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    spark = spark_local_cluster_4x1
    rng = np.random.default_rng(1)
    features = rng.random((250, 2)).round(3).tolist()
    features[7] = [1.0, 1.0]
    df = spark.createDataFrame([(i, f) for i, f in enumerate(features)],
                               "id long, features array<double>").repartition(3)
    model = (TFModel().setInputMapping({"features": "features"})
             .setOutputMapping({"output_0": "prediction"}).setExportDir(linear_model)
             .setBatchSize(32))   # 250 rows in 3 partitions: short last batches
    scored = model.transform(df)
    assert scored.columns == ["id", "features", "prediction"]
    rows = scored.collect()
    assert sorted(r["id"] for r in rows) == list(range(250))
    for row in rows:      # each prediction beside its own input row
        a, b = row["features"]
        assert row["prediction"] == pytest.approx(3.14 * a + 1.618 * b, abs=1e-4)
    (seven,) = [r for r in rows if r["id"] == 7]
    assert seven["prediction"] == pytest.approx(4.758, abs=0.01)
    path = str(tmp_path / "pipeline")
    Pipeline(stages=[model]).fit(df).save(path)
    loaded = PipelineModel.load(path)
    again = {r["id"]: r["prediction"] for r in loaded.transform(df).collect()}
    assert again == {r["id"]: r["prediction"] for r in rows}


def test_tfmodel_names_what_does_not_match_the_signature(spark_local_cluster_4x1, linear_model):
    df = spark_local_cluster_4x1.createDataFrame([([1.0, 2.0],)], "x array<double>")
    model = TFModel().setExportDir(linear_model).setOutputMapping({"output_0": "y"})
    with pytest.raises(tfos.ConfigError, match=r"signature 'serving_default' takes \['features'\]"):
        model.setInputMapping({"x": "wrong"}).transform(df)
    with pytest.raises(tfos.ConfigError, match=r"columns \['nope'\]"):
        model.setInputMapping({"nope": "features"}).transform(df)
