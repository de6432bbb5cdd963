"""fpnunet: self-configuring 3D-to-2D (OCT volume -> en-face mask) segmentation."""
from setuptools import setup

setup(
    name="fpnunet",
    version="0.1.0",
    description="Self-configuring label-efficient 3D-to-2D segmentation with Feature Projection Networks",
    python_requires=">=3.10",
    packages=[
        "fpnunet",
        "fpnunet.synthetic",
        "fpnunet.networks",
        "fpnunet.training",
        "fpnunet.evaluation",
        "fpnunet.report",
        "fpnunet.importer",
        "fpnunet.plans",
        "fpnunet.preprocessing",
        "fpnunet.inference",
    ],
    package_dir={
        "fpnunet": "fpnunet",
        "fpnunet.plans": "plans",
        "fpnunet.preprocessing": "preprocessing",
        "fpnunet.inference": "inference",
    },
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "SimpleITK>=2.2",
        "batchgenerators>=0.25",
        "scipy>=1.10",
        "pandas>=2.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        # fpn_import: device exports (HEYEX VOL/XML/E2E, Topcon FDA via eyepy; DICOM OPT/OP via pydicom)
        "import": ["eyepy>=0.21", "pydicom>=3.0"],
        "dev": ["pytest>=7", "ruff>=0.4", "eyepy>=0.21", "pydicom>=3.0"],
    },
    entry_points={
        "console_scripts": [
            "fpn_make_synthetic=fpnunet.synthetic:main",
            "fpn_plan_and_preprocess=fpnunet.preprocessing.cli:main",
            "fpn_pretrain=fpnunet.training.pretrain_cli:main",
            "fpn_train=fpnunet.training.train_cli:main",
            "fpn_train_folds=fpnunet.training.folds_cli:main",
            "fpn_predict=fpnunet.inference.cli:main",
            "fpn_evaluate=fpnunet.evaluation.cli:main",
            "fpn_report=fpnunet.report.cli:main",
            "fpn_import=fpnunet.importer.cli:main",
            "fpn_convert_checkpoint=fpnunet.checkpoint_convert:main",
        ]
    },
)
