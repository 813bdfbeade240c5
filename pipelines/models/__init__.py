"""Models: the recall components behind one interface (rankers/), the runtime query encoder (student.py) and
the training loops that fine-tune the text models (training.py, never imported by serving). Imports only core."""
