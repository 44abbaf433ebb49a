"""The embedded demo's world: the toy safety world (a `kind: toy` source), the BPE tokenizer
and tiny Llama it builds without downloads, and the demo's job section."""
