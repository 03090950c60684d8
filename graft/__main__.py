from graft.cli import entry

entry()
