"""fpnunet: self-configuring 3D-to-2D (OCT volume -> en-face mask) segmentation."""
from setuptools import setup

setup(
    name="fpnunet",
    version="0.1.0",
    description="Self-configuring label-efficient 3D-to-2D segmentation with Feature Projection Networks",
    python_requires=">=3.10",
    packages=[
        "fpnunet",
        "fpnunet.commands",
        "fpnunet.synthetic",
        "fpnunet.networks",
        "fpnunet.training",
        "fpnunet.training.cmc",
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
        "dev": ["pytest>=7", "ruff>=0.4", "import-linter>=2.1", "eyepy>=0.21", "pydicom>=3.0", "Pillow>=9.1",
                "safetensors>=0.4", "highdicom>=0.22", "onnx>=1.15", "onnxruntime>=1.17"],
        # fpn_import: device exports (HEYEX VOL/XML/E2E via eyepy; DICOM OPT/OP via pydicom; Topcon FDA/FDS
        # by fpnunet's own reader, whose JPEG 2000 B-scans Pillow decodes)
        "import": ["eyepy>=0.21", "pydicom>=3.0", "Pillow>=9.1"],
        # any timm CNN as the 2D encoder of omnia/dsnet/dxnet, and --encoder-weights imagenet
        # (resnet18/resnet34 are built in); timm needs a torchvision built for your torch
        "timm": ["timm>=1.0"],
        # fpn_export_model / fpn_install_model (weights as safetensors, never a pickle), DICOM
        # Segmentation output (highdicom), ONNX export and its onnxruntime parity check
        "handover": ["safetensors>=0.4", "highdicom>=0.22", "pydicom>=3.0", "Pillow>=9.1", "onnx>=1.15",
                     "onnxruntime>=1.17"],
        # benchmarks/nnunet_projection.py only: the nnU-Net v2 baseline, never imported by fpnunet
        "bench": ["nnunetv2>=2.5"],
    },
    entry_points={
        "console_scripts": [
            "fpn_make_synthetic=fpnunet.commands.make_synthetic:main",
            "fpn_plan_and_preprocess=fpnunet.commands.plan_and_preprocess:main",
            "fpn_pretrain=fpnunet.commands.pretrain:main",
            "fpn_train=fpnunet.commands.train:main",
            "fpn_train_folds=fpnunet.commands.train_folds:main",
            "fpn_predict=fpnunet.commands.predict:main",
            "fpn_evaluate=fpnunet.commands.evaluate:main",
            "fpn_paths=fpnunet.commands.paths:main",
            "fpn_report=fpnunet.commands.report:main",
            "fpn_suggest_labels=fpnunet.commands.suggest_labels:main",
            "fpn_import=fpnunet.importer.cli:main",
            "fpn_convert_checkpoint=fpnunet.commands.convert_checkpoint:main",
            "fpn_export_model=fpnunet.commands.export_model:main",
            "fpn_install_model=fpnunet.commands.install_model:main",
            "fpn_find_best_configuration=fpnunet.commands.find_best_configuration:main",
            "fpn_export_dicom=fpnunet.commands.export_dicom:main",
        ]
    },
)
