"""Build hook: ship the top-level ``device_profiles/`` inside the package as ``edge_runtime/device_profiles/``.

The profiles stay data at the top of the repository; a wheel (what a device installs) carries them beside the code
that loads them, so an installed ``edge-runtime`` knows the same profiles as a checkout.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithProfiles(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "edge_runtime" / "device_profiles"
        target.mkdir(parents=True, exist_ok=True)
        for profile in sorted((ROOT / "device_profiles").glob("*.yaml")):
            self.copy_file(str(profile), str(target / profile.name))


setup(cmdclass={"build_py": BuildWithProfiles})
