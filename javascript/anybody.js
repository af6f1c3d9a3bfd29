// Anybody tab: start the webui's progress bar (with live previews) for a training run, like its own Train tab.
function anybody_start_training() {
    gradioApp().querySelector('#anybody_train_result').innerHTML = '';
    var id = randomId();
    requestProgress(id, gradioApp().getElementById('anybody_train_output'), gradioApp().getElementById('anybody_train_gallery'), function() {}, function(progress) {
        gradioApp().getElementById('anybody_train_progress').innerHTML = progress.textinfo || '';
    });
    var res = Array.from(arguments);
    res[0] = id;
    return res;
}
