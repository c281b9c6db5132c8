from setuptools import find_packages, setup

from nmc import __version__

setup(
    name="nmc",
    version=__version__,
    description="N replicas of a Node.js site in Docker, behind one port, relayed round-robin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["nmc", "nmc.*"]),
    package_data={"nmc": ["dashboard.html"]},  # the admin port's page (GET /)
    install_requires=[
        "gevent>=24.2",
        "requests>=2.31",
        "docker>=7.0",
        "docopt-ng>=0.9",
        "prometheus-client>=0.17",
        "inotify_simple>=2.0",  # --watch (see nmc/watch.py for why this one)
    ],
    extras_require={
        "gunicorn": ["gunicorn>=23"],
        "test": ["pytest>=8", "gunicorn>=23", "selenium>=4.11"],
    },
    entry_points={"console_scripts": ["nmc-server=nmc.__main__:run"]},
)
