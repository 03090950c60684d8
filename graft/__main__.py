from graft.commands.cli import entry

entry()
