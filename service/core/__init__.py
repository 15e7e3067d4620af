"""What every worker does whatever its engine: numpy, zlib and Ray only, no Keras, no framework.

* `deciding.py`: global metrics, the resumable stock deciders, consensus and the decision record;
* `replicas.py`: the per-epoch replica check;
* `reporting.py`: the per-epoch report (to Ray Train with the checkpoint, and to the driver), the drills;
* `messages.py`: what a worker tells the driver;
* `callbacks.py`: the list of those callback classes, declared on an engine's Keras by `declare`.

The engines (`service/engines/<name>/`) supply a Keras and a framework; the one worker loop
(`service/engines/loop.py`) puts the two together.
"""
