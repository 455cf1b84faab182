"""`localllm chat`: a Textual chat app that reaches the daemon through localllm.client only."""
