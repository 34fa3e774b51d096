"""cancelwatch: a streaming monitor of Amazon sellers cancellation rate."""
