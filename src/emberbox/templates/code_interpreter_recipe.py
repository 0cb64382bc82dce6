"""What the ``code-interpreter`` template's own layer holds, and so its key: the packages,
the setup scripts and the recipe's version (the build itself is ``code_interpreter.py``).

Apart from the build because ``base`` needs the key too: a layer cache keeps every built-in
template's layers, whichever template was built.
"""

from __future__ import annotations

from . import hashing

RECIPE_VERSION = 3
# Pinned, because the layer's key names them: a new version is a new recipe.
PACKAGES = ("numpy==2.4.6", "pandas==3.1.1", "matplotlib==3.11.2", "bash_kernel==0.10.0")
# node 18 from bookworm (and its security updates); TypeScript 4.8's compiler, for our
# typescript kernel (it strips types per cell); R with Debian's IRkernel (the ``r`` language).
DEBIAN_PACKAGES = ("nodejs", "node-typescript", "r-base-core", "r-cran-irkernel")
VENV = "/opt/emberbox/venv"
DEBS = "/tmp/emberbox-debs"  # in the rootfs, while the layer is built


# Runs in the rootfs (as root) after the wheels are installed.
SETUP = rf"""set -e
# Only the compiler of node-typescript: its language-server bundles are 42 MB more.
tsl=/usr/share/nodejs/typescript/lib
dpkg --path-exclude="$tsl/tsserver*" --path-exclude="$tsl/typescriptServices*" \
  --path-exclude="$tsl/typingsInstaller.js" --path-exclude=/usr/bin/tsserver \
  -i {DEBS}/*.deb >/dev/null
rm -rf {DEBS}
node -e 'process.exit(0)'
{VENV}/bin/python -m bash_kernel.install --sys-prefix >/dev/null
{VENV}/bin/python -m emberbox.interpreter.js_kernel install >/dev/null
{VENV}/bin/python -m emberbox.interpreter.js_kernel install --typescript >/dev/null
node -e 'require("typescript")'
# IRkernel's own kernelspec, where the venv's jupyter_client looks (installspec would need
# the jupyter CLI on R's PATH).
mkdir -p {VENV}/share/jupyter/kernels/ir
cat > {VENV}/share/jupyter/kernels/ir/kernel.json <<'JSON'
{{"argv": ["/usr/bin/R", "--slave", "-e", "IRkernel::main()", "--args", "{{connection_file}}"],
 "display_name": "R", "language": "R"}}
JSON
Rscript -e 'library(IRkernel)'
site={VENV}/lib/python3.*/site-packages
for pkg in numpy pandas matplotlib mpl_toolkits; do
  find $site/$pkg -depth -type d -name tests -exec rm -rf {{}} +
done
# Optional to ipykernel and IPython (a debugger, completions) and 55 MB: kernels start faster.
rm -rf $site/debugpy $site/debugpy-* $site/jedi $site/jedi-* $site/parso $site/parso-*
rm -rf /root/.cache
"""
# Runs as ``user``: the caches a first plot would otherwise build, in user's home.
USER_SETUP = "import matplotlib.pyplot"


def layer_key(envd_key: str) -> str:
    """The layer's key, from base's envd layer (which hashes the project) and the recipe."""
    return hashing.hash_json(
        {
            "parent": envd_key,
            "packages": PACKAGES,
            "debian_packages": DEBIAN_PACKAGES,
            "setup": SETUP,
            "user_setup": USER_SETUP,
            "recipe": RECIPE_VERSION,
        }
    )
