"""Executors run one claimed job and report an Outcome; the dispatcher decides what follows."""
