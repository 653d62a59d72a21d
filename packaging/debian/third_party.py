"""Copy the license files of everything a PyInstaller bundle holds into a doc directory.

Run by packaging/build-deb with the build venv's Python: ``third_party.py PYZ_TOC DEST``.
The modules come from PyInstaller's PYZ table of contents; each non-stdlib top-level module
is mapped to its distribution, whose LICENSE/COPYING/NOTICE/AUTHORS files are copied to
DEST/<distribution>/. The interpreter's own LICENSE.txt goes to DEST/Python/.
"""

import ast
import importlib.metadata
import re
import shutil
import sys
import sysconfig
from pathlib import Path

LICENSE_FILE = re.compile(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", re.IGNORECASE)
# modules packaging/pushy.spec collects as source files beside the archive (not in its table)
COLLECTED_AS_SOURCE = ("psycopg",)


def main(toc_path: str, dest: str) -> int:
    toc = ast.literal_eval(Path(toc_path).read_text())
    modules = {entry[0].split(".")[0] for entry in toc[-1]} | set(COLLECTED_AS_SOURCE)
    by_module = importlib.metadata.packages_distributions()
    dists = set()
    for name in modules - set(sys.stdlib_module_names):
        dists.update(by_module.get(name, []))
    out = Path(dest)
    missing = []
    for dist_name in sorted(dists):
        dist = importlib.metadata.distribution(dist_name)
        files = [f for f in dist.files or [] if LICENSE_FILE.search(f.name)]
        if dist_name.lower() == "pushy":
            continue  # ours: /usr/share/doc/PKG/copyright
        if not files:
            missing.append(dist_name)
            continue
        for file in files:
            target = out / dist_name / file.name
            if target.exists():
                target = out / dist_name / f"{file.parent.name}-{file.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file.locate(), target)
    python_license = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    (out / "Python").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(python_license, out / "Python" / "LICENSE.txt")
    print(
        f"third-party licenses: {len(dists)} distributions"
        + (f"; no license file in: {', '.join(missing)}" if missing else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
