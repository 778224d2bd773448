"""The same parallel tempering run on an nnx, an Equinox and a plain-function model.

Shown on the "Bring your own model" guide, type-checked and run in CI (a few
seconds on a CPU: random data, a few steps). Each model is written the way its
library's users write it; ``tp.create_replicas`` takes it as it is.
"""

import tempfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

import tempering as tp
from tempering.frontends import Functions
from tempering.frontends import equinox as tp_eqx
from tempering.frontends import nnx as tp_nnx

rng = np.random.default_rng(0)
x = rng.normal(size=(256, 8, 8, 1)).astype(np.float32)
y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int32)
train, validation = (x[:192], y[:192]), (x[192:], y[192:])
ladder = tp.linear_ladder("dropout_rate", 0.0, 0.3, 3, learning_rate=0.05)
config = tp.RunConfig(num_steps=30, interval=10, batch_size=32)


# --- flax.nnx: modes switched by .train() / .eval(), a traced dropout ---------
class CNN(nnx.Module):
    """A CNN with BatchNorm and a dropout whose rate each replica gets."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = tp_nnx.Dropout(rngs=rngs)  # its rate is a call argument
        self.out = nnx.Linear(4 * 8 * 8, 2, rngs=rngs)

    def __call__(self, x, dropout_rate=0.0):
        """Logits of a batch."""
        x = self.drop(nnx.relu(self.bn(self.conv(x))), dropout_rate)
        return self.out(x.reshape(x.shape[0], -1))


# The class builds each replica from its own nnx.Rngs (independent starts);
# an instance, CNN(nnx.Rngs(0)), would give every replica its weights.
state = tp.create_replicas(jax.random.key(0), CNN, tp.sgd(0.05), x[:2], ladder=ladder)
result = tp.pt_train(state, ladder, jax.random.key(1), train_data=train,
                     validation_data=validation, run_config=config)  # fmt: skip
best = result.summary.best_replica
model = tp.replica(result.state, best)  # an nnx CNN, in eval mode
logits = model(validation[0])
loss = optax.softmax_cross_entropy_with_integer_labels(logits, validation[1]).mean()
assert np.isclose(loss, tp.evaluate(result.state, *validation).loss[best], rtol=1e-5)

# Save the best replica for inference, and load it into a fresh model.
folder = tempfile.mkdtemp()
with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(f"{folder}/best", nnx.state(model))
graph, abstract = nnx.split(nnx.eval_shape(lambda: CNN(nnx.Rngs(0))))
with ocp.StandardCheckpointer() as checkpointer:
    loaded = nnx.merge(graph, checkpointer.restore(f"{folder}/best", abstract))
loaded.eval()
assert np.allclose(loaded(validation[0]), logits, atol=1e-6)
print("nnx", tp.get_hyperparams(result.state, best))


# --- Equinox: a module called on one example (the engine vmaps the batch) ------
class MLP(eqx.Module):
    """An MLP called on one example."""

    hidden: eqx.nn.Linear
    drop: tp_eqx.Dropout
    out: eqx.nn.Linear

    def __init__(self, key: jax.Array):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(64, 32, key=k1)
        self.drop = tp_eqx.Dropout()
        self.out = eqx.nn.Linear(32, 2, key=k2)

    def __call__(self, x, *, key=None, dropout_rate=0.0):
        """Logits of one example."""
        h = self.drop(jax.nn.relu(self.hidden(x.reshape(-1))), dropout_rate, key=key)
        return self.out(h)


state = tp.create_replicas(jax.random.key(0), MLP, tp.sgd(0.05), x[:2], ladder=ladder)
result = tp.pt_train(state, ladder, jax.random.key(1), train_data=train,
                     validation_data=validation, run_config=config)  # fmt: skip
mlp = tp.replica(result.state, result.summary.best_replica)  # in inference mode
eqx.tree_serialise_leaves(f"{folder}/mlp.eqx", mlp)
like = eqx.nn.inference_mode(MLP(jax.random.key(5)))
loaded_mlp = eqx.tree_deserialise_leaves(f"{folder}/mlp.eqx", like)
assert np.allclose(jax.vmap(loaded_mlp)(validation[0]), jax.vmap(mlp)(validation[0]))
print("equinox", result.summary.best_val_loss)


# --- Plain functions: init(key, x) and apply(params, x, *, train, key, ...) -----
def init(key, x):
    """The parameters of a linear model."""
    return {"w": 0.1 * jax.random.normal(key, (64, 2)), "b": jnp.zeros(2)}


def apply(params, x, *, train, key, dropout_rate=0.0):
    """Logits of a batch; dropout on the inputs in training."""
    h = x.reshape(x.shape[0], -1)
    if train:
        h = tp.layers.dropout(key, h, dropout_rate)
    return h @ params["w"] + params["b"]


state = tp.create_replicas(
    jax.random.key(0), Functions(init, apply), tp.sgd(0.05), x[:2], ladder=ladder
)
result = tp.pt_train(state, ladder, jax.random.key(1), train_data=train,
                     validation_data=validation, run_config=config)  # fmt: skip
print("functions", result.summary.best_val_loss)
