"Install pithtrain from settings.ini (the nbdev 2 template imports pkg_resources, which setuptools dropped)."
from configparser import ConfigParser
from setuptools import setup, find_packages

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
c = cfg['DEFAULT']
reqs = c.get('requirements', '').split()
dev_reqs = c.get('dev_requirements', '').split()
scripts = [s.strip() for s in c.get('console_scripts', '').split() if s.strip()]

setup(
    name=c['lib_name'], version=c['version'], description=c['description'],
    author=c['author'], author_email=c['author_email'], license=c['license'],
    packages=find_packages(include=['pithtrain', 'pithtrain.*']),
    python_requires='>=' + c['min_python'],
    install_requires=reqs, extras_require={'dev': dev_reqs},
    entry_points={'console_scripts': scripts, 'nbdev': [f"{c['lib_path']}={c['lib_path']}._modidx:d"]},
    include_package_data=True, zip_safe=False,
)
