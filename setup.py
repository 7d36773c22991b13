"Build medsynth_nb from settings.ini, the project's single configuration (no pkg_resources)."
import shlex
from configparser import ConfigParser
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py as _build_py

here = Path(__file__).parent
config = ConfigParser(delimiters=["="])
config.read(here / "settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

expected = ["version", "description", "keywords", "author", "author_email", "license", "lib_name", "user", "git_url", "min_python"]
missing = [k for k in expected if k not in cfg]
if missing:
    raise SystemExit(f"settings.ini is missing required keys: {missing}")

licenses = {"apache2": "Apache-2.0"}  # SPDX expressions (license classifiers are deprecated)
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]
py_versions = "3.10 3.11 3.12 3.13".split()
lic = licenses.get(cfg["license"].lower(), cfg["license"])
min_python = cfg["min_python"]

requirements = shlex.split(cfg.get("requirements", ""))
dev_requirements = shlex.split(cfg.get("dev_requirements", ""))
console_scripts = cfg.get("console_scripts", "").split()
readme = here / "README.md"


class build_py(_build_py):
    """Also copy `data_samples/` into the built package (`medsynth_nb/data_samples/`), where `data.samples_root` finds
    it: a wheel, `pip install .` or `pip install git+...` then has the sample data without the repository. An editable
    install reads the repository's folder instead, so nothing is copied into the source tree."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False): return
        src, dst = here / "data_samples", Path(self.build_lib) / cfg["lib_name"] / "data_samples"
        if not (src / "manifest.json").is_file():
            raise SystemExit(f"{src}: no manifest.json; build the samples first (python -m medsynth_nb.phantom)")
        self.mkpath(str(dst))
        for f in sorted(src.iterdir()):
            if f.is_file(): self.copy_file(str(f), str(dst / f.name))

setuptools.setup(
    name=cfg["lib_name"].replace("_", "-"),
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    keywords=cfg["keywords"],
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=lic,
    url=cfg["git_url"],
    packages=setuptools.find_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    include_package_data=True,
    python_requires=">=" + min_python,
    install_requires=requirements,
    extras_require={"dev": dev_requirements},
    entry_points={
        "console_scripts": console_scripts,
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"].title(),
        "Natural Language :: " + cfg["language"].title(),
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ]
    + [f"Programming Language :: Python :: {v}" for v in py_versions[py_versions.index(min_python):]],
    zip_safe=False,
    cmdclass={"build_py": build_py},
)
