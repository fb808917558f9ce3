"""environment.yml (the conda GPU install) parses, takes PyTorch from conda-forge only (no `pytorch` or `nvidia`
channel, no `pytorch-cuda`), and asks for every requirement of settings.ini (and of its cluster extra) by name."""
import re, shlex
from configparser import ConfigParser
from pathlib import Path
import yaml

ROOT = Path(__file__).parent.parent
CONDA_NAMES = {'torch': {'pytorch', 'pytorch-gpu'}}     # pip name: its conda-forge names, where they differ


def _name(spec: str) -> str:
    "The normalised package name of a requirement such as 'timm>=1.0' or 'pytorch-gpu >=2.4'."
    return re.match(r'[A-Za-z0-9_.\-]+', spec.strip()).group(0).lower().replace('_', '-')


def _settings() -> list[str]:
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    return [s for key in ('requirements', 'cluster_requirements') for s in shlex.split(cfg['DEFAULT'][key])]


def _missing(requirements: list[str], names: set[str]) -> list[str]:
    "The requirements none of whose conda names is in `names`."
    return [r for r in map(_name, requirements) if not CONDA_NAMES.get(r, {r}) & names]


def _environment() -> tuple[dict, set[str]]:
    env = yaml.safe_load((ROOT / 'environment.yml').read_text())
    names = set()
    for dep in env['dependencies']:
        if isinstance(dep, dict): names |= {_name(s) for s in dep['pip'] if not s.startswith('-')}
        else: names.add(_name(dep.split('::')[-1]))
    return env, names


def test_environment_asks_for_every_requirement():
    _, names = _environment()
    assert not _missing(_settings(), names), f"environment.yml lacks {_missing(_settings(), names)}"
    assert 'distributed' in names and 'pytorch-gpu' in names


def test_environment_uses_conda_forge_only():
    env, names = _environment()
    assert env['channels'] == ['conda-forge']
    assert not {'pytorch-cuda', 'cudatoolkit'} & names
    assert not [d for d in env['dependencies'] if isinstance(d, str) and '::' in d]   # no per-package channel


def test_the_check_reports_what_is_missing():
    _, names = _environment()
    assert _missing(['torch>=2.4', 'scikit_image', 'no-such-package>=1'], names) == ['no-such-package']
