"""The image's tests (ami/): fast validators (test_static.py) and the slow chroot build-and-run
(test_chroot.py, scripts/test_ami.sh). Neither is in scripts/run_tests.sh's default set."""


def pytest_configure(config):
    config.addinivalue_line("markers", "ami_slow: builds the image's root with mmdebstrap and "
                                       "boots its units in a chroot (minutes; scripts/test_ami.sh)")
