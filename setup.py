"""tfos: TensorFlow on Apache Spark."""
from setuptools import Extension, find_packages, setup

# A real S3 server on loopback (moto's, run by flask) for the tfos.files tests, the S3 gallery
# example and the data benchmark; moto[server] would add some 20 packages S3 does not use.
LOCAL_S3 = ["moto[s3]>=5.0", "flask", "flask-cors"]

# tfos's compiled transport: plain C against the Python headers (no Cython, no TF headers).
# Optional, so a host without a C compiler still installs tfos (without the compiled
# transport); the test suite fails when it did not build (tests/unit/test_core_ring.py).
# The verbs carrier needs no rdma-core to build: it dlopen()s libibverbs at run time.
CORE = Extension("rdma._core",
                 sources=["rdma/csrc/module.c", "rdma/csrc/ring.c", "rdma/csrc/engine.c",
                          "rdma/csrc/loopback.c", "rdma/csrc/shm_carrier.c",
                          "rdma/csrc/verbs_carrier.c"],
                 depends=["rdma/csrc/ring.h"], extra_compile_args=["-O2", "-std=c11", "-Wall"],
                 libraries=["dl"], optional=True)

setup(
    name="tfos",
    version="0.1.0",
    description="TensorFlow on Apache Spark: launch TF clusters from Spark and feed them Spark data",
    packages=find_packages(include=["tfos", "tfos.*", "rdma", "rdma.*"]),
    ext_modules=[CORE],
    python_requires=">=3.10",
    install_requires=[
        "pyspark>=4.0,<5",
        # The full `tensorflow` wheel, not `tensorflow-cpu`: it runs on CPU and GPU hosts alike,
        # and tf-keras declares a dependency on `tensorflow`, so tensorflow-cpu would need a
        # --no-deps install that leaves `pip check` broken. See README "Dependencies".
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "tensorboard>=2.20",
        "numpy",
        "pyarrow>=15",
        "pandas>=2.2,<3",  # pyspark requires it for mapInArrow (DataFrame feeding)
        "grpcio>=1.60",
        "cloudpickle",
        "psutil",
        "google-crc32c",  # TFRecord framing (tfos.core.tfrecord), in Python workers without TF
        "protobuf",       # tf.train.Example (tfos.core.tfrecord)
        "fsspec>=2024.6",  # tfos.files: one interface over local, S3 and HDFS files in the nodes
        "s3fs>=2024.6",    # s3:// and s3a:// for tfos.files
        "rich>=13",        # the driver's live progress display (terminal and notebook)
    ],
    extras_require={
        # nbclient, nbformat, ipykernel: the notebooks are tested in a real Jupyter kernel.
        "test": ["pytest>=8", "pytest-timeout", "hypothesis", "scikit-learn", "nbclient>=0.10",
                 "nbformat>=5.10", "ipykernel>=6.29", *LOCAL_S3],
        "notebooks": ["ipykernel>=6.29"],
        "examples": ["scikit-learn", *LOCAL_S3],
    },
)
