"""The command-line programs: ``scripts/*.py`` and the ``mrcnn-*`` commands of ``[project.scripts]`` run these."""
