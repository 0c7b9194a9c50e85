"""What a job reads: RecordIO records, images with .lst files, Pipe-mode streams, as batches."""
