"""What a job writes besides images: rows and parts, job.json's schema, infotext."""
