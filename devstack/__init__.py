"""Local stand-in for the AWS runtime: starts the servers and runs the functions as Lambda would."""
