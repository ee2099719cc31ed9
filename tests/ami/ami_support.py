"""Paths and the tool check shared by the image's tests (tests/ami)."""
import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AMI = os.path.join(REPO, "ami")


def require(tool: str, package: str) -> str:
    """The path of ``tool``; where it is missing, a skip that names the package, or under CI
    (CI=true) a failure, so that CI cannot pass by skipping."""
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must have it", pytrace=False)
        pytest.skip(reason)
    return path
